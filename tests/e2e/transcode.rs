//! End-to-end tests of the transcode feature against the running server and real third-party tools.
