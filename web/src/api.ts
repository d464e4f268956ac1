// The JSON API, as the console calls it: one fetch wrapper that adds the session's key, turns the server's
// error body {"error": {"type", "message", "param"}} into an ApiError, and asks for a key on 401.

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
      const parsed = JSON.parse(text) as { error?: { type?: string; message?: string; param?: string | null } };
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

// --- The API's shapes (openapi/openapi.json), as far as the console reads them ---

export interface ImageOut {
  index: number;
  seed: number;
  png_base64: string;
  image_id?: string | null;
  reward?: number | null;
}

export interface SelectionOut {
  reward_model: string;
  candidates: number;
  accepted: number;
  best_of?: number | null;
  min_reward?: number | null;
  candidate_scores?: number[] | null;
}

export interface GenerateResponse {
  id: string;
  model: string;
  images: ImageOut[];
  selection?: SelectionOut | null;
  timings: Record<string, number>;
  warnings: string[];
}

export interface FeedbackOut {
  id: string;
  created_at: number;
  image_id?: string | null;
  prompt: string;
  label: string;
  rater?: string | null;
}

export interface FineTuneOut {
  id: string;
  created_at: number;
  updated_at: number;
  started_at?: number | null;
  finished_at?: number | null;
  status: string;
  stage?: string | null;
  progress: number;
  base_model: string;
  result_model?: string | null;
  error?: string | null;
  metrics?: Record<string, unknown> | null;
  spec: Record<string, unknown>;
}

export interface FineTuneEvent {
  id: string;
  created_at: number;
  level: string;
  kind: string;
  message: string;
  data?: Record<string, unknown> | null;
}

export interface Page<T> {
  data: T[];
  has_more: boolean;
}

export interface ModelOut {
  id: string;
  kind: string;
  source: string;
  created_at: number;
  parent?: string | null;
  job_id?: string | null;
  lineage: string[];
  active: boolean;
  loaded: boolean;
  checksummed_files: number;
  metrics?: Record<string, unknown> | null;
}

export interface ModelList {
  data: ModelOut[];
  active: string;
}

export interface Health {
  status: string;
  ready: boolean;
  model: string;
  device: string;
  execution_provider?: string | null;
  version: string;
}
