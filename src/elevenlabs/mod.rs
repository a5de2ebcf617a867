//! ElevenLabs: the typed client, its wire types, the webhook signature, and
//! the simulator the binary serves when no API key is configured.

pub mod client;
pub mod outcome;
pub mod simulator;
pub mod types;
pub mod webhook;

pub use client::{ElevenLabs, ElevenLabsError};
