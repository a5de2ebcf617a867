//! A small time-to-live cache for ElevenLabs lists (agents, phone numbers):
//! `ELEVENLABS_CACHE_SECS`, never used for batch status.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct TtlCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Value)>>,
}

impl TtlCache {
    pub fn new(ttl: Duration) -> Self {
        TtlCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, key: &str) -> Option<Value> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    pub fn put(&self, key: &str, value: Value) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() > 1000 {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        entries.insert(key.to_owned(), (Instant::now(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_zero_disables() {
        let cache = TtlCache::new(Duration::from_millis(20));
        cache.put("a", Value::from(1));
        assert_eq!(cache.get("a"), Some(Value::from(1)));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(cache.get("a"), None);
        let off = TtlCache::new(Duration::ZERO);
        off.put("a", Value::from(1));
        assert_eq!(off.get("a"), None);
    }
}
