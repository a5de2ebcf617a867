//! The integration suite, as one binary (one link, one process): every test
//! drives the real HTTP server on a random port with a fresh database, on
//! SQLite and on PostgreSQL; `instances` (several servers on one database)
//! and races only PostgreSQL has run on PostgreSQL alone.

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
mod instances;
mod ops;
mod simulator;
mod store;
mod users;
mod webhooks;
