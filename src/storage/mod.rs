//! Images this server generated, kept so that `/score` and `/rerank` can take `image_ids` instead of the bytes.
//!
//! For now an in-memory store with a bound on the number of images: the oldest go first, and a restart forgets
//! them all. Durable storage (SQLite through sqlx, with retention) replaces it with the feedback API (#5); the
//! interface stays the same.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// One stored image and what produced it.
#[derive(Debug, Clone)]
pub struct StoredImage {
    pub png: Arc<Vec<u8>>,
    pub prompt: String,
    pub seed: u64,
    pub model: String,
    pub reward: Option<f32>,
}

struct Inner {
    images: HashMap<String, StoredImage>,
    order: VecDeque<String>,
}

pub struct ImageStore {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl ImageStore {
    /// Keeps at most `capacity` images; 0 turns storing off.
    pub fn new(capacity: usize) -> Self {
        ImageStore {
            capacity,
            inner: Mutex::new(Inner {
                images: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Stores the image and returns its id (`img_` and 32 hex digits), or `None` when storing is off.
    pub fn insert(&self, image: StoredImage) -> Option<String> {
        if !self.enabled() {
            return None;
        }
        let id = format!("img_{}", uuid::Uuid::new_v4().simple());
        let mut inner = self.inner.lock().ok()?;
        while inner.order.len() >= self.capacity {
            match inner.order.pop_front() {
                Some(oldest) => {
                    inner.images.remove(&oldest);
                }
                None => break,
            }
        }
        inner.images.insert(id.clone(), image);
        inner.order.push_back(id.clone());
        Some(id)
    }

    /// The image with this id. `field` names the request field in the error, e.g. `image_ids[1]`.
    pub fn get(&self, id: &str, field: &str) -> Result<StoredImage> {
        let inner = self
            .inner
            .lock()
            .map_err(|_| Error::Internal("the image store's lock is poisoned".into()))?;
        inner.images.get(id).cloned().ok_or_else(|| {
            Error::validation(
                field,
                format!(
                    "`{field}` is `{id}`, which this server does not have: ids are kept for the last {} generated images, in memory (--image-store-capacity)",
                    self.capacity
                ),
            )
        })
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |inner| inner.images.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(seed: u64) -> StoredImage {
        StoredImage {
            png: Arc::new(vec![1, 2, 3]),
            prompt: "a red circle".into(),
            seed,
            model: "shapes-sd".into(),
            reward: Some(0.5),
        }
    }

    #[test]
    fn keeps_the_newest_and_names_missing_ids() {
        let store = ImageStore::new(2);
        let first = store.insert(image(1)).unwrap();
        let second = store.insert(image(2)).unwrap();
        let third = store.insert(image(3)).unwrap();
        assert!(first.starts_with("img_") && first.len() == 36);
        assert_eq!(store.len(), 2);
        assert_eq!(store.get(&second, "image_ids[0]").unwrap().seed, 2);
        assert_eq!(store.get(&third, "image_ids[0]").unwrap().seed, 3);
        let err = store.get(&first, "image_ids[1]").unwrap_err();
        assert_eq!(err.param(), Some("image_ids[1]"));
        assert!(err.to_string().contains("last 2 generated images"), "{err}");
    }

    #[test]
    fn capacity_zero_stores_nothing() {
        let store = ImageStore::new(0);
        assert!(store.insert(image(1)).is_none());
        assert!(store.is_empty());
    }
}
