//! End-to-end tests of the rtsp feature against the running server and real third-party tools.
