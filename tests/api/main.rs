//! The integration suite, as one binary (one link, one process): every test
//! drives the real HTTP server on a random port with a fresh database, on
//! SQLite and on PostgreSQL.

mod helpers;

mod agents;
mod auth;
mod batches;
mod calls;
mod cli;
mod clients;
mod errors;
mod groups;
mod history;
mod inputs;
mod ops;
mod simulator;
mod store;
mod users;
mod webhooks;
