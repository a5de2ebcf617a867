//! Tokens, passwords and the login rate limiter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::store::User;

pub const ISSUER: &str = "marcador";

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub id: i64,
    pub username: String,
    pub email: String,
    pub role: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    /// The user's token version at issue ([`User::token_version`]); a token
    /// issued before versions existed has none and counts as version 0.
    #[serde(default)]
    pub ver: i64,
}

/// What a valid token says: whose it is and the version it was issued at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedToken {
    pub user_id: i64,
    pub version: i64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    Expired,
    Invalid,
}

/// HS256 keys plus the pinned validation rules.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: chrono::Duration,
}

impl JwtKeys {
    pub fn new(secret: &Secret, ttl_hours: u32) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = 5;
        JwtKeys {
            encoding: EncodingKey::from_secret(secret.expose().as_bytes()),
            decoding: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
            ttl: chrono::Duration::hours(i64::from(ttl_hours)),
        }
    }

    pub fn issue(&self, user: &User) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user.id.to_string(),
            id: user.id,
            username: user.username.clone(),
            email: user.email.clone(),
            role: user.role.as_str().to_owned(),
            iat: now,
            exp: now + self.ttl.num_seconds(),
            iss: ISSUER.to_owned(),
            ver: user.token_version,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// Checks signature, algorithm, `exp` and `iss`; returns the user id and
    /// the version (the caller compares it with the user's).
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        let id: i64 = data.claims.sub.parse().map_err(|_| TokenError::Invalid)?;
        if id != data.claims.id {
            return Err(TokenError::Invalid);
        }
        Ok(VerifiedToken {
            user_id: id,
            version: data.claims.ver,
        })
    }
}

/// Hashes with argon2id on a blocking thread: it is deliberately slow.
pub async fn hash_password(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
    })
    .await?
}

/// Verifies on a blocking thread. With no stored hash (unknown email) it checks
/// against a fixed dummy hash, so both failures take about as long.
pub async fn verify_password(password: String, stored: Option<String>) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || {
        let hash_text = stored.as_deref().unwrap_or_else(|| dummy_hash());
        let parsed = PasswordHash::new(hash_text)
            .map_err(|e| anyhow::anyhow!("stored hash unreadable: {e}"))?;
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(ok && stored.is_some())
    })
    .await?
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(b"not-a-real-password", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Counts failed logins per key (an IP or an email) in a fixed window that
/// starts at the first failure. In memory, per instance.
pub struct LoginLimiter {
    window: Duration,
    per_email: u32,
    per_ip: u32,
    failures: Mutex<HashMap<String, (Instant, u32)>>,
}

impl LoginLimiter {
    pub fn new(max_attempts: u32, window: Duration) -> Arc<Self> {
        Arc::new(LoginLimiter {
            window,
            per_email: max_attempts.max(1),
            per_ip: max_attempts.max(1).saturating_mul(4),
            failures: Mutex::new(HashMap::new()),
        })
    }

    fn keys(ip: &str, email: &str) -> [(String, bool); 2] {
        [
            (format!("ip:{ip}"), true),
            (format!("email:{}", email.to_lowercase()), false),
        ]
    }

    /// `Some(seconds)` to wait when either the IP or the email is locked out.
    pub fn retry_after(&self, ip: &str, email: &str) -> Option<u64> {
        let now = Instant::now();
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        Self::keys(ip, email)
            .iter()
            .filter_map(|(key, is_ip)| {
                let (start, count) = failures.get(key)?;
                let limit = if *is_ip { self.per_ip } else { self.per_email };
                let ends = *start + self.window;
                (*count >= limit && ends > now).then(|| (ends - now).as_secs().max(1))
            })
            .max()
    }

    pub fn record_failure(&self, ip: &str, email: &str) {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() > 50_000 {
            let window = self.window;
            failures.retain(|_, (start, _)| *start + window > now);
        }
        for (key, _) in Self::keys(ip, email) {
            let entry = failures.entry(key).or_insert((now, 0));
            if entry.0 + self.window <= now {
                *entry = (now, 0);
            }
            entry.1 += 1;
        }
    }

    /// A successful login clears the email's count (not the IP's).
    pub fn record_success(&self, email: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(&format!("email:{}", email.to_lowercase()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(token_version: i64) -> User {
        let now = chrono::Utc::now();
        User {
            id: 7,
            username: "ana".into(),
            email: "ana@example.com".into(),
            first_name: None,
            last_name: None,
            role: crate::store::Role::User,
            is_active: true,
            created_at: now,
            updated_at: now,
            token_version,
        }
    }

    #[test]
    fn a_token_carries_the_version_it_was_issued_at() {
        let keys = JwtKeys::new(&Secret::new("k".repeat(40)), 1);
        let token = keys.issue(&user(3)).unwrap();
        assert_eq!(
            keys.verify(&token),
            Ok(VerifiedToken {
                user_id: 7,
                version: 3
            })
        );
    }

    #[test]
    fn a_token_from_before_versions_counts_as_version_zero() {
        let secret = "k".repeat(40);
        let keys = JwtKeys::new(&Secret::new(secret.clone()), 1);
        let now = chrono::Utc::now().timestamp();
        let old = serde_json::json!({"sub": "7", "id": 7, "username": "ana", "email": "ana@example.com",
            "role": "user", "iat": now, "exp": now + 60, "iss": ISSUER});
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &old,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        assert_eq!(keys.verify(&token).map(|t| t.version), Ok(0));
    }

    #[test]
    fn limiter_locks_an_email_after_the_maximum_and_unlocks_on_success() {
        let limiter = LoginLimiter::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(limiter.retry_after("1.1.1.1", "a@b.co"), None);
            limiter.record_failure("1.1.1.1", "a@b.co");
        }
        assert!(limiter.retry_after("1.1.1.1", "A@B.CO").is_some());
        assert_eq!(limiter.retry_after("2.2.2.2", "other@b.co"), None);
        limiter.record_success("a@b.co");
        assert_eq!(limiter.retry_after("1.1.1.1", "a@b.co"), None);
    }

    #[test]
    fn limiter_locks_an_ip_across_emails() {
        let limiter = LoginLimiter::new(1, Duration::from_secs(60));
        for i in 0..4 {
            limiter.record_failure("9.9.9.9", &format!("u{i}@b.co"));
        }
        assert!(limiter.retry_after("9.9.9.9", "fresh@b.co").is_some());
    }

    #[test]
    fn window_expiry_forgets_failures() {
        let limiter = LoginLimiter::new(1, Duration::from_millis(1));
        limiter.record_failure("1.1.1.1", "a@b.co");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(limiter.retry_after("1.1.1.1", "a@b.co"), None);
    }
}
