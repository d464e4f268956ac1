//! Rate limits over time (#28): per API key (in open mode, per client address), a fixed one-minute window of
//! requests and of generation work (pixel-steps: images, best-of candidates included, × steps × width ×
//! height), counted in the database that every replica shares, so the limit holds across replicas. The key
//! check counts each request; `/generate` and OpenAI's routes charge their work once the request is planned.
//! A refusal is a 429 with `Retry-After` and the `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`
//! headers (draft-ietf-httpapi-ratelimit-headers); admitted requests carry the same headers.

use actix_web::http::header::HeaderMap;

use crate::error::{Error, Result};
use crate::http::auth::Caller;
use crate::storage::{now_millis, Storage};

/// The window's length.
pub const WINDOW_MS: i64 = 60_000;

/// The server's limits per minute (`--rate-limit-requests`, `--rate-limit-work`); 0 is none. A key may carry
/// its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub requests_per_minute: u64,
    pub work_per_minute: u64,
}

/// The default `--rate-limit-requests`: 20 a second, averaged over a minute.
pub const DEFAULT_REQUESTS_PER_MINUTE: u64 = 1200;
/// The default `--rate-limit-work`: 2^32 pixel-steps, four of the largest requests `--max-work` allows by
/// default, e.g. 32 images of 512×512 at 50 steps.
pub const DEFAULT_WORK_PER_MINUTE: u64 = 1 << 32;

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            requests_per_minute: DEFAULT_REQUESTS_PER_MINUTE,
            work_per_minute: DEFAULT_WORK_PER_MINUTE,
        }
    }
}

/// Where a caller stands in its window: what the headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window ends.
    pub reset_secs: u64,
}

impl Standing {
    /// Sets the `RateLimit-*` headers.
    pub fn write(&self, headers: &mut HeaderMap) {
        crate::http::error::write_rate_limit(headers, self.limit, self.remaining, self.reset_secs);
    }
}

/// The window `now` falls in, and the seconds until it ends.
fn window(now: i64) -> (i64, u64) {
    let start = now - now.rem_euclid(WINDOW_MS);
    (start, ((start + WINDOW_MS - now) as u64).div_ceil(1000))
}

fn limit_of(own: Option<i64>, server: u64) -> u64 {
    own.map_or(server, |value| value.max(0) as u64)
}

impl RateLimits {
    /// Counts one request of `caller`; refuses it when its window already holds its limit. `None` when no
    /// request limit applies.
    pub async fn admit(&self, storage: &Storage, caller: &Caller) -> Result<Option<Standing>> {
        let limit = limit_of(caller.limits.requests_per_minute, self.requests_per_minute);
        if limit == 0 {
            return Ok(None);
        }
        let now = now_millis();
        let (start, reset_secs) = window(now);
        let (requests, _) = storage.count_rate(&caller.bucket(), start, 1, 0).await?;
        let standing = Standing {
            limit,
            remaining: limit.saturating_sub(requests.max(0) as u64),
            reset_secs,
        };
        if requests as u64 > limit {
            return Err(Error::RateLimited {
                message: format!(
                    "{} has made {limit} requests this minute, its limit ({}); retry in {reset_secs} s",
                    who(caller),
                    if caller.limits.requests_per_minute.is_some() {
                        "the key's `rate_limit.requests_per_minute`"
                    } else {
                        "--rate-limit-requests"
                    }
                ),
                limit: standing.limit,
                remaining: standing.remaining,
                reset_secs: standing.reset_secs,
            });
        }
        Ok(Some(standing))
    }

    /// Charges `work` pixel-steps of generation to `caller`'s window; refuses (and takes the charge back) when
    /// it would pass the work limit.
    pub async fn charge_work(&self, storage: &Storage, caller: &Caller, work: u64) -> Result<()> {
        let limit = limit_of(caller.limits.work_per_minute, self.work_per_minute);
        if limit == 0 {
            return Ok(());
        }
        let setting = if caller.limits.work_per_minute.is_some() {
            "the key's `rate_limit.work_per_minute`"
        } else {
            "--rate-limit-work"
        };
        let (start, reset_secs) = window(now_millis());
        if work > limit {
            return Err(Error::RateLimited {
                message: format!(
                    "this request asks for {work} pixel-steps (images × steps × width × height), more than {} may \
                     use in a minute ({limit}, {setting}): ask for fewer images, candidates or steps, or a smaller size",
                    who(caller)
                ),
                limit,
                remaining: 0,
                reset_secs,
            });
        }
        let charge = work.min(i64::MAX as u64) as i64;
        let bucket = format!("{}:work", caller.bucket());
        let (_, used) = storage.count_rate(&bucket, start, 0, charge).await?;
        if used as u64 > limit {
            storage.count_rate(&bucket, start, 0, -charge).await?;
            return Err(Error::RateLimited {
                message: format!(
                    "{} has used {} of its {limit} pixel-steps this minute ({setting}); this request needs {work}; \
                     retry in {reset_secs} s",
                    who(caller),
                    (used - charge).max(0)
                ),
                limit,
                remaining: limit.saturating_sub((used - charge).max(0) as u64),
                reset_secs,
            });
        }
        Ok(())
    }
}

/// The caller as errors name it: its key, or in open mode its address.
fn who(caller: &Caller) -> String {
    match (&caller.key_name, &caller.client) {
        (Some(name), _) => format!("the API key `{name}`"),
        (None, Some(client)) => format!("the client {client}"),
        (None, None) => "this client".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_minutes_and_reset_counts_up_to_their_end() {
        assert_eq!(window(120_000), (120_000, 60));
        assert_eq!(window(179_001), (120_000, 1));
        assert_eq!(window(150_500), (120_000, 30));
        assert_eq!(limit_of(None, 10), 10);
        assert_eq!(limit_of(Some(0), 10), 0);
        assert_eq!(limit_of(Some(3), 10), 3);
    }

    #[test]
    fn the_headers_say_the_standing() {
        let mut headers = HeaderMap::new();
        Standing {
            limit: 5,
            remaining: 2,
            reset_secs: 17,
        }
        .write(&mut headers);
        let get = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_string();
        assert_eq!(
            (
                get("RateLimit-Limit"),
                get("RateLimit-Remaining"),
                get("RateLimit-Reset")
            ),
            ("5".into(), "2".into(), "17".into())
        );
        assert_eq!(get("RateLimit-Policy"), "5;w=60");
    }
}
