//! marcador: outbound AI voice-call campaigns on ElevenLabs.
//!
//! The binary (`src/main.rs`) and the integration tests share this library.

pub mod app;
pub mod auth;
pub mod cache;
pub mod config;
pub mod elevenlabs;
pub mod error;
pub mod extract;
pub mod http;
pub mod import;
pub mod openapi;
pub mod phone;
pub mod store;
pub mod sync;
pub mod telemetry;

pub use app::{AppState, Application, router};
pub use config::Config;
