//! haystack server (placeholder until its issue lands).
