//! Tests of the peer session.
