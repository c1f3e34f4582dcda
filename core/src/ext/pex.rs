//! `ut_pex` (BEP 11) peer exchange (filled in by the next commit).
