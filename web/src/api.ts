// The JSON API, as the console calls it: one fetch wrapper that adds the session's key, turns the server's
// error body {"error": {"type", "message", "param"}} into an ApiError, and asks for a key on 401.

import type { components } from "./api.gen";

const KEY_STORAGE = "t2i-align.api-key";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly type: string,
    message: string,
    readonly param: string | null = null,
    readonly retryAfter: string | null = null,
  ) {
    super(message);
  }
}

export function apiKey(): string | null {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function setApiKey(key: string | null): void {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

/** Fired on every 401 with the server's message; main.ts opens the key dialog. */
export const AUTH_REQUIRED = "t2i-auth-required";

export interface RequestOptions {
  signal?: AbortSignal;
}

export async function api<T>(method: string, path: string, body?: unknown, options: RequestOptions = {}): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const key = apiKey();
  if (key) headers["Authorization"] = `Bearer ${key}`;
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: options.signal,
    });
  } catch (err) {
    if (err instanceof DOMException && err.name === "AbortError") {
      throw new ApiError(0, "cancelled", "Cancelled: the request was stopped, and so was its work on the server.");
    }
    throw new ApiError(0, "network", `The server did not answer (${String(err)}). Is it still running?`);
  }
  const text = await response.text();
  if (!response.ok) {
    let type = "http_error";
    let message = `${response.status} ${response.statusText}`;
    let param: string | null = null;
    try {
      const parsed = JSON.parse(text) as Partial<components["schemas"]["ErrorBody"]>;
      if (parsed.error) {
        type = parsed.error.type ?? type;
        message = parsed.error.message ?? message;
        param = parsed.error.param ?? null;
      }
    } catch {
      if (text.trim()) message = `${message}: ${text.trim().slice(0, 300)}`;
    }
    const error = new ApiError(response.status, type, message, param, response.headers.get("Retry-After"));
    if (response.status === 401) window.dispatchEvent(new CustomEvent(AUTH_REQUIRED, { detail: message }));
    throw error;
  }
  return (text ? JSON.parse(text) : null) as T;
}

/** A readable line for any failure, with the status and what to do about it. */
export function describe(error: unknown): string {
  if (error instanceof ApiError) {
    switch (error.status) {
      case 0:
        return error.message;
      case 401:
        return `${error.message}. Enter a valid API key (the "API key" button), then try again.`;
      case 403:
        return `${error.message}. Use a key with that scope.`;
      case 429:
        return `${error.message}${error.retryAfter ? ` (the server says: retry after ${error.retryAfter} s)` : ""}.`;
      default:
        return `${error.message} (HTTP ${error.status}, ${error.type})`;
    }
  }
  return String(error);
}

// --- The API's shapes: generated from openapi/openapi.json into api.gen.ts (`make web-api`), never written here ---

type Schemas = components["schemas"];

export type ImageOut = Schemas["ImageOut"];
export type SelectionOut = Schemas["SelectionOut"];
export type GenerateRequest = Schemas["GenerateRequest"];
export type GenerateResponse = Schemas["GenerateResponse"];
export type FeedbackRequest = Schemas["FeedbackRequest"];
export type FeedbackOut = Schemas["FeedbackOut"];
export type FineTuneRequest = Schemas["FineTuneRequest"];
export type FineTuneOut = Schemas["FineTuneOut"];
export type FineTunePage = Schemas["FineTunePage"];
export type FineTuneEventOut = Schemas["FineTuneEventOut"];
export type FineTuneEventPage = Schemas["FineTuneEventPage"];
export type Hyperparameters = Schemas["Hyperparameters"];
export type Objective = Schemas["Objective"];
export type PretrainTarget = Schemas["PretrainTarget"];
export type Relabel = Schemas["Relabel"];
export type PromptGenerator = Schemas["PromptGenerator"];
export type PretrainData = Schemas["PretrainData"];
export type GateSpec = Schemas["GateSpec"];
export type GateDecision = Schemas["GateDecision"];
export type MetricGain = Schemas["MetricGain"];
export type FeedbackFilter = Schemas["FeedbackFilter"];
export type ModelOut = Schemas["ModelOut"];
export type ModelList = Schemas["ModelList"];
export type HealthResponse = Schemas["HealthResponse"];
