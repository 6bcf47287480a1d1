//! bacnet end-to-end tests against the running server.
