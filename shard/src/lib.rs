//! Thread-per-core runtime: shard threads, timer wheel, mailboxes.
