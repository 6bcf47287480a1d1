//! End-to-end tests of the rtmp feature against the running server and real third-party tools.
