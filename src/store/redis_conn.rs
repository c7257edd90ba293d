//! One Redis connection that makes itself again after a failure, at most once per
//! backoff (100 ms doubling to 2 s): while Redis is unreachable a call fails at once,
//! it never waits for Redis more than the I/O timeout.

use super::StoreError;
use redis::{Client, Connection};
use std::time::{Duration, Instant};

/// How long a connection attempt and each command may take.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

pub struct RedisConn {
    client: Client,
    url: String,
    con: Option<Connection>,
    /// No connection attempt before this.
    next_try: Instant,
    backoff: Duration,
    /// Connections made (the first, and each after a failure).
    pub connects: u64,
}

impl RedisConn {
    pub fn new(url: &str) -> Result<RedisConn, StoreError> {
        let client = Client::open(url).map_err(|e| StoreError::Io {
            path: url.to_string(),
            detail: format!("not a Redis URL: {e}"),
        })?;
        Ok(RedisConn {
            client,
            url: url.to_string(),
            con: None,
            next_try: Instant::now(),
            backoff: BACKOFF_MIN,
            connects: 0,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether a connection is open (the last call on it succeeded).
    pub fn is_connected(&self) -> bool {
        self.con.is_some()
    }

    pub fn error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.url.clone(),
            detail: e.to_string(),
        }
    }

    /// A new connection of the same client (e.g. for pub/sub), with `read_timeout`.
    pub fn open_another(&self, read_timeout: Duration) -> redis::RedisResult<Connection> {
        let c = self.client.get_connection_with_timeout(IO_TIMEOUT)?;
        c.set_read_timeout(Some(read_timeout))?;
        c.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(c)
    }

    fn connect(&mut self) -> Result<&mut Connection, StoreError> {
        if self.con.is_none() {
            let now = Instant::now();
            if now < self.next_try {
                return Err(self.error("Redis is unreachable (waiting to connect again)"));
            }
            match self.open_another(IO_TIMEOUT) {
                Ok(c) => {
                    self.con = Some(c);
                    self.backoff = BACKOFF_MIN;
                    self.connects += 1;
                }
                Err(e) => {
                    self.next_try = now + self.backoff;
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                    return Err(self.error(format!("cannot connect: {e}")));
                }
            }
        }
        Ok(self.con.as_mut().expect("connected"))
    }

    /// Runs `f` on the connection (made when there is none); an error drops it, and
    /// the next call connects again.
    pub fn with<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let r = f(self.connect()?);
        r.map_err(|e| {
            self.con = None;
            self.error(e)
        })
    }
}
