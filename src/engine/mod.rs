//! The streaming router (placeholder until its issue lands).
