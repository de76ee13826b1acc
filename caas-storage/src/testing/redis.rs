//! The Redis tier in memory: the commands and scripts the cache uses, answered in this
//! process with Redis's semantics (keys, `PX` expiry on the memory clock, `SCAN MATCH`
//! globs), so the cache layer above runs unchanged: the same keys, TTLs, generation fences,
//! tombstones and invalidations as on a real Redis.
//!
//! The framework's Lua scripts are run by their SHA1 (`EVALSHA`), each by a Rust function
//! written to do what the script does (`SCRIPTS`). A command or script not listed here is
//! refused with an error naming it: the cache takes that as Redis being down and reads
//! MongoDB, and other features report it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use redis::{Arg, Cmd, ErrorKind, RedisError, RedisResult, Value};

use crate::connection::Clock;
use crate::connection::LocalRedis;

/// One in-process Redis (every logical database shares it, as on a cluster). Cheap to clone.
#[derive(Clone)]
pub(crate) struct MemoryRedis {
    inner: Arc<Mutex<Keys>>,
    clock: Clock,
}

#[derive(Default)]
struct Keys {
    map: BTreeMap<Vec<u8>, Entry>,
}

struct Entry {
    value: Stored,
    /// Expiry, in memory-clock milliseconds.
    expires_at: Option<i64>,
}

enum Stored {
    Bytes(Vec<u8>),
    Set(BTreeSet<Vec<u8>>),
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
    Stream(Stream),
}

/// A stream: entries in id order, and the last id given out.
#[derive(Default)]
struct Stream {
    entries: Vec<(StreamId, Vec<Vec<u8>>)>,
    last: StreamId,
}

/// `<ms>-<seq>`.
type StreamId = (i64, i64);

fn parse_id(b: &[u8], default_seq: i64) -> RedisResult<StreamId> {
    let t = text(b);
    let (ms, seq) = match t.split_once('-') {
        Some((ms, seq)) => (
            ms.to_owned(),
            seq.parse().map_err(|_| err(format!("bad stream id {t}")))?,
        ),
        None => (t.clone(), default_seq),
    };
    Ok((
        ms.parse().map_err(|_| err(format!("bad stream id {t}")))?,
        seq,
    ))
}

fn show_id((ms, seq): StreamId) -> Vec<u8> {
    format!("{ms}-{seq}").into_bytes()
}

impl std::fmt::Debug for MemoryRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryRedis")
    }
}

type Script = fn(&mut Keys, i64, &[Vec<u8>], &[Vec<u8>]) -> RedisResult<Value>;

/// The hashes of the scripts kept as source text (sessions, rate limits).
static TEXT_SCRIPTS: std::sync::LazyLock<[(String, Script); 3]> = std::sync::LazyLock::new(|| {
    let hash = |text: &str| redis::Script::new(text).get_hash().to_owned();
    [
        (hash(crate::rate_limit::GCRA), gcra as Script),
        (hash(crate::sessions::CREATE), create_session as Script),
        (hash(crate::sessions::TOUCH), touch_session as Script),
    ]
});

/// The framework's scripts this Redis runs, by hash.
fn script_for(sha: &[u8]) -> Option<Script> {
    if let Some((_, f)) = TEXT_SCRIPTS.iter().find(|(h, _)| h.as_bytes() == sha) {
        return Some(*f);
    }
    use crate::cache::scripts as c;
    use crate::connection::lease;
    use crate::write_behind::{flusher, APPEND};
    let table: [(&str, Script); 8] = [
        (c::PUT_IF_UNCHANGED.get_hash(), put_if_unchanged),
        (c::INVALIDATE.get_hash(), invalidate),
        (c::WRITE_THROUGH.get_hash(), write_through),
        (c::RELEASE_LOCK.get_hash(), release_lock),
        (lease::HOLD.get_hash(), hold_lease),
        (lease::RELEASE.get_hash(), release_lock),
        (APPEND.get_hash(), append),
        (flusher::ACK.get_hash(), ack),
    ];
    table
        .into_iter()
        .find(|(h, _)| h.as_bytes() == sha)
        .map(|(_, f)| f)
}

fn err(message: String) -> RedisError {
    RedisError::from((ErrorKind::Client, "memory Redis", message))
}

impl MemoryRedis {
    pub(crate) fn new(clock: Clock) -> Self {
        MemoryRedis {
            inner: Arc::default(),
            clock,
        }
    }

    fn keys(&self) -> MutexGuard<'_, Keys> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one command.
    #[cfg(test)]
    fn run(&self, cmd: &Cmd) -> RedisResult<Value> {
        self.run_all(&mut std::iter::once(cmd)).remove(0)
    }
}

impl LocalRedis for MemoryRedis {
    fn run_all(&self, cmds: &mut dyn Iterator<Item = &Cmd>) -> Vec<RedisResult<Value>> {
        let now = self.clock.now_ms();
        let mut keys = self.keys();
        keys.expire(now);
        cmds.map(|cmd| {
            let args: Vec<Vec<u8>> = cmd
                .args_iter()
                .filter_map(|a| match a {
                    Arg::Simple(b) => Some(b.to_vec()),
                    _ => None,
                })
                .collect();
            keys.exec(now, &args)
        })
        .collect()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn int(b: &[u8]) -> RedisResult<i64> {
    text(b)
        .parse()
        .map_err(|_| err("value is not an integer or out of range".into()))
}

impl Keys {
    fn stream(&self, key: &[u8]) -> RedisResult<Option<&Stream>> {
        match self.map.get(key).map(|e| &e.value) {
            None => Ok(None),
            Some(Stored::Stream(s)) => Ok(Some(s)),
            Some(_) => Err(err(
                "WRONGTYPE Operation against a key holding the wrong kind of value".into(),
            )),
        }
    }

    fn xadd(
        &mut self,
        key: &[u8],
        id: &[u8],
        fields: Vec<Vec<u8>>,
        maxlen: Option<usize>,
        now: i64,
    ) -> RedisResult<StreamId> {
        let entry = self.map.entry(key.to_vec()).or_insert(Entry {
            value: Stored::Stream(Stream::default()),
            expires_at: None,
        });
        let Stored::Stream(s) = &mut entry.value else {
            return Err(err(
                "WRONGTYPE Operation against a key holding the wrong kind of value".into(),
            ));
        };
        let id = if id == b"*" {
            if now > s.last.0 {
                (now, 0)
            } else {
                (s.last.0, s.last.1 + 1)
            }
        } else {
            let id = parse_id(id, 0)?;
            if id <= s.last {
                return Err(err(
                    "The ID specified in XADD is equal or smaller than the target stream top item"
                        .into(),
                ));
            }
            id
        };
        s.last = id;
        s.entries.push((id, fields));
        if let Some(max) = maxlen {
            let excess = s.entries.len().saturating_sub(max);
            s.entries.drain(..excess);
        }
        Ok(id)
    }

    fn xdel(&mut self, key: &[u8], ids: &[Vec<u8>]) -> RedisResult<i64> {
        let ids: Vec<StreamId> = ids
            .iter()
            .map(|i| parse_id(i, 0))
            .collect::<RedisResult<_>>()?;
        match self.map.get_mut(key).map(|e| &mut e.value) {
            Some(Stored::Stream(s)) => {
                let before = s.entries.len();
                s.entries.retain(|(id, _)| !ids.contains(id));
                Ok((before - s.entries.len()) as i64)
            }
            _ => Ok(0),
        }
    }

    fn expire(&mut self, now: i64) {
        self.map
            .retain(|_, e| e.expires_at.is_none_or(|at| at > now));
    }

    fn get(&self, key: &[u8]) -> Option<&[u8]> {
        match self.map.get(key).map(|e| &e.value) {
            Some(Stored::Bytes(b)) => Some(b),
            _ => None,
        }
    }

    fn set(&mut self, key: &[u8], value: &[u8], px: Option<i64>, now: i64) {
        self.map.insert(
            key.to_vec(),
            Entry {
                value: Stored::Bytes(value.to_vec()),
                expires_at: px.map(|ms| now + ms),
            },
        );
    }

    fn del(&mut self, key: &[u8]) -> i64 {
        i64::from(self.map.remove(key).is_some())
    }

    fn incr(&mut self, key: &[u8]) -> RedisResult<i64> {
        let n = match self.get(key) {
            Some(b) => int(b)? + 1,
            None => 1,
        };
        let expires_at = self.map.get(key).and_then(|e| e.expires_at);
        self.map.insert(
            key.to_vec(),
            Entry {
                value: Stored::Bytes(n.to_string().into_bytes()),
                expires_at,
            },
        );
        Ok(n)
    }

    fn pexpire(&mut self, key: &[u8], ms: i64, now: i64) -> i64 {
        match self.map.get_mut(key) {
            Some(e) => {
                e.expires_at = Some(now + ms);
                1
            }
            None => 0,
        }
    }

    fn exec(&mut self, now: i64, args: &[Vec<u8>]) -> RedisResult<Value> {
        let Some(name) = args.first() else {
            return Err(err("empty command".into()));
        };
        let name = text(name).to_ascii_uppercase();
        let a = &args[1..];
        let need = |n: usize| {
            if a.len() < n {
                Err(err(format!("wrong number of arguments for '{name}'")))
            } else {
                Ok(())
            }
        };
        match name.as_str() {
            "PING" => Ok(Value::SimpleString("PONG".into())),
            "GET" => {
                need(1)?;
                Ok(self
                    .get(&a[0])
                    .map_or(Value::Nil, |b| Value::BulkString(b.to_vec())))
            }
            "SET" => {
                need(2)?;
                let (mut px, mut nx) = (None, false);
                let mut i = 2;
                while i < a.len() {
                    match text(&a[i]).to_ascii_uppercase().as_str() {
                        "PX" if i + 1 < a.len() => {
                            px = Some(int(&a[i + 1])?);
                            i += 1;
                        }
                        "EX" if i + 1 < a.len() => {
                            px = Some(int(&a[i + 1])? * 1000);
                            i += 1;
                        }
                        "NX" => nx = true,
                        other => return Err(err(format!("SET option {other} is not supported"))),
                    }
                    i += 1;
                }
                if nx && self.map.contains_key(&a[0]) {
                    return Ok(Value::Nil);
                }
                self.set(&a[0], &a[1], px, now);
                Ok(Value::Okay)
            }
            "DEL" => Ok(Value::Int(a.iter().map(|k| self.del(k)).sum())),
            "EXISTS" => Ok(Value::Int(
                a.iter().filter(|k| self.map.contains_key(*k)).count() as i64,
            )),
            "INCR" => {
                need(1)?;
                self.incr(&a[0]).map(Value::Int)
            }
            "PEXPIRE" => {
                need(2)?;
                Ok(Value::Int(self.pexpire(&a[0], int(&a[1])?, now)))
            }
            "PTTL" => {
                need(1)?;
                Ok(Value::Int(match self.map.get(&a[0]) {
                    None => -2,
                    Some(Entry {
                        expires_at: None, ..
                    }) => -1,
                    Some(Entry {
                        expires_at: Some(at),
                        ..
                    }) => at - now,
                }))
            }
            "PUBLISH" => Ok(Value::Int(0)),
            "SADD" => {
                need(2)?;
                let entry = self.map.entry(a[0].clone()).or_insert(Entry {
                    value: Stored::Set(BTreeSet::new()),
                    expires_at: None,
                });
                let Stored::Set(set) = &mut entry.value else {
                    return Err(err("WRONGTYPE".into()));
                };
                Ok(Value::Int(
                    a[1..].iter().filter(|m| set.insert(m.to_vec())).count() as i64,
                ))
            }
            "SREM" => {
                need(2)?;
                Ok(Value::Int(
                    match self.map.get_mut(&a[0]).map(|e| &mut e.value) {
                        Some(Stored::Set(set)) => {
                            a[1..].iter().filter(|m| set.remove(m.as_slice())).count() as i64
                        }
                        _ => 0,
                    },
                ))
            }
            "HGET" => {
                need(2)?;
                Ok(hash_of(self, &a[0])
                    .and_then(|h| h.get(&a[1]))
                    .map_or(Value::Nil, |v| Value::BulkString(v.clone())))
            }
            "HMGET" => {
                need(2)?;
                let h = hash_of(self, &a[0]);
                Ok(Value::Array(
                    a[1..]
                        .iter()
                        .map(|f| {
                            h.and_then(|h| h.get(f))
                                .map_or(Value::Nil, |v| Value::BulkString(v.clone()))
                        })
                        .collect(),
                ))
            }
            "HSET" => {
                need(3)?;
                let entry = self.map.entry(a[0].clone()).or_insert(Entry {
                    value: Stored::Hash(BTreeMap::new()),
                    expires_at: None,
                });
                let Stored::Hash(h) = &mut entry.value else {
                    return Err(err("WRONGTYPE".into()));
                };
                let added = a[1..]
                    .chunks(2)
                    .filter(|kv| kv.len() == 2 && h.insert(kv[0].clone(), kv[1].clone()).is_none())
                    .count();
                Ok(Value::Int(added as i64))
            }
            "TIME" => {
                let us = now * 1000;
                Ok(Value::Array(vec![
                    Value::BulkString((us / 1_000_000).to_string().into_bytes()),
                    Value::BulkString((us % 1_000_000).to_string().into_bytes()),
                ]))
            }
            "SMEMBERS" => {
                need(1)?;
                Ok(Value::Array(match self.map.get(&a[0]).map(|e| &e.value) {
                    Some(Stored::Set(s)) => s.iter().cloned().map(Value::BulkString).collect(),
                    _ => Vec::new(),
                }))
            }
            "SCAN" => self.scan(a),
            "XADD" => {
                need(3)?;
                let mut i = 1;
                let mut maxlen = None;
                if text(&a[1]).eq_ignore_ascii_case("MAXLEN") {
                    i = 2;
                    if matches!(text(&a[2]).as_str(), "=" | "~") {
                        i = 3;
                    }
                    maxlen = Some(usize::try_from(int(&a[i])?).unwrap_or(0));
                    i += 1;
                }
                if i >= a.len() {
                    return Err(err("wrong number of arguments for 'XADD'".into()));
                }
                let fields = a[i + 1..].to_vec();
                self.xadd(&a[0], &a[i], fields, maxlen, now)
                    .map(|id| Value::BulkString(show_id(id)))
            }
            "XLEN" => {
                need(1)?;
                Ok(Value::Int(
                    self.stream(&a[0])?.map_or(0, |s| s.entries.len() as i64),
                ))
            }
            "XRANGE" => {
                need(3)?;
                let start = if a[1] == b"-" {
                    (i64::MIN, i64::MIN)
                } else {
                    parse_id(&a[1], 0)?
                };
                let end = if a[2] == b"+" {
                    (i64::MAX, i64::MAX)
                } else {
                    parse_id(&a[2], i64::MAX)?
                };
                let count = match a.get(3) {
                    Some(c) if text(c).eq_ignore_ascii_case("COUNT") => usize::try_from(int(a
                        .get(4)
                        .ok_or_else(|| err("COUNT needs a value".into()))?)?)
                    .unwrap_or(0),
                    _ => usize::MAX,
                };
                let entries = self.stream(&a[0])?.map_or_else(Vec::new, |s| {
                    s.entries
                        .iter()
                        .filter(|(id, _)| *id >= start && *id <= end)
                        .take(count)
                        .map(|(id, fields)| {
                            Value::Array(vec![
                                Value::BulkString(show_id(*id)),
                                Value::Array(
                                    fields.iter().cloned().map(Value::BulkString).collect(),
                                ),
                            ])
                        })
                        .collect()
                });
                Ok(Value::Array(entries))
            }
            "XDEL" => {
                need(2)?;
                self.xdel(&a[0], &a[1..]).map(Value::Int)
            }
            "INFO" => Ok(Value::BulkString(
                format!("# Memory\r\nused_memory:{}\r\n", self.map.len()).into_bytes(),
            )),
            "EVALSHA" => {
                need(2)?;
                let Some(script) = script_for(&a[0]) else {
                    return Err(err(format!(
                        "script {} is not one the memory backend runs",
                        text(&a[0])
                    )));
                };
                let n = usize::try_from(int(&a[1])?).unwrap_or(usize::MAX);
                let rest = &a[2..];
                if rest.len() < n {
                    return Err(err("more keys than arguments".into()));
                }
                script(self, now, &rest[..n], &rest[n..])
            }
            other => Err(err(format!(
                "command {other} is not supported by the memory backend"
            ))),
        }
    }

    /// `SCAN cursor MATCH pattern [COUNT n] [TYPE t]`: one pass returns everything (cursor 0).
    fn scan(&self, a: &[Vec<u8>]) -> RedisResult<Value> {
        let mut pattern = b"*".to_vec();
        let mut key_type: Option<String> = None;
        let mut i = 1;
        while i + 1 < a.len() {
            match text(&a[i]).to_ascii_uppercase().as_str() {
                "MATCH" => pattern = a[i + 1].clone(),
                "TYPE" => key_type = Some(text(&a[i + 1]).to_ascii_lowercase()),
                _ => {}
            }
            i += 2;
        }
        let keys: Vec<Value> = self
            .map
            .iter()
            .filter(|(k, e)| {
                glob(&pattern, k)
                    && key_type.as_deref().is_none_or(|t| match e.value {
                        Stored::Bytes(_) => t == "string",
                        Stored::Set(_) => t == "set",
                        Stored::Hash(_) => t == "hash",
                        Stored::Stream(_) => t == "stream",
                    })
            })
            .map(|(k, _)| Value::BulkString(k.clone()))
            .collect();
        Ok(Value::Array(vec![
            Value::BulkString(b"0".to_vec()),
            Value::Array(keys),
        ]))
    }
}

/// Redis's glob: `*`, `?`, `[...]` classes (with `^` negation) and `\` escapes.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(_), None) => false,
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(b'['), Some(c)) => {
            let Some(end) = p.iter().skip(1).position(|b| *b == b']').map(|i| i + 1) else {
                return p[0] == *c && glob(&p[1..], &s[1..]);
            };
            let class = &p[1..end];
            let (neg, class) = match class.first() {
                Some(b'^') => (true, &class[1..]),
                _ => (false, class),
            };
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    hit |= (class[i]..=class[i + 2]).contains(c);
                    i += 3;
                } else {
                    hit |= class[i] == *c;
                    i += 1;
                }
            }
            hit != neg && glob(&p[end + 1..], &s[1..])
        }
        (Some(b'\\'), Some(c)) if p.len() > 1 => p[1] == *c && glob(&p[2..], &s[1..]),
        (Some(a), Some(c)) => a == c && glob(&p[1..], &s[1..]),
    }
}

// ---- the cache's scripts (cache/scripts.rs), one function each -------------------------------

/// `PUT_IF_UNCHANGED`. KEYS: data, generation. ARGV: generation seen, value, ttl ms.
fn put_if_unchanged(
    k: &mut Keys,
    now: i64,
    keys: &[Vec<u8>],
    argv: &[Vec<u8>],
) -> RedisResult<Value> {
    let (Some(data), Some(gen), Some(seen), Some(value), Some(ttl)) = (
        keys.first(),
        keys.get(1),
        argv.first(),
        argv.get(1),
        argv.get(2),
    ) else {
        return Err(err("PUT_IF_UNCHANGED: wrong arguments".into()));
    };
    let current = k.get(gen).unwrap_or_default();
    if current != seen.as_slice() {
        return Ok(Value::Int(0));
    }
    k.set(data, value, Some(int(ttl)?), now);
    Ok(Value::Int(1))
}

/// `INVALIDATE`. KEYS: data, generation. ARGV: generation ttl ms, channel, message.
fn invalidate(k: &mut Keys, now: i64, keys: &[Vec<u8>], argv: &[Vec<u8>]) -> RedisResult<Value> {
    let (Some(data), Some(gen), Some(gen_ttl)) = (keys.first(), keys.get(1), argv.first()) else {
        return Err(err("INVALIDATE: wrong arguments".into()));
    };
    k.incr(gen)?;
    k.pexpire(gen, int(gen_ttl)?, now);
    Ok(Value::Int(k.del(data)))
}

/// `WRITE_THROUGH`. KEYS: data, generation. ARGV: generation ttl ms, channel, message,
/// version, value, ttl ms.
fn write_through(k: &mut Keys, now: i64, keys: &[Vec<u8>], argv: &[Vec<u8>]) -> RedisResult<Value> {
    let (Some(data), Some(gen)) = (keys.first(), keys.get(1)) else {
        return Err(err("WRITE_THROUGH: wrong arguments".into()));
    };
    if argv.len() < 6 {
        return Err(err("WRITE_THROUGH: wrong arguments".into()));
    }
    k.incr(gen)?;
    k.pexpire(gen, int(&argv[0])?, now);
    if let Some(cur) = k.get(data) {
        let digits: Vec<u8> = cur
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .copied()
            .collect();
        if !digits.is_empty()
            && cur.get(digits.len()) == Some(&b'|')
            && int(&digits)? >= int(&argv[3])?
        {
            return Ok(Value::Int(0));
        }
    }
    k.set(data, &argv[4], Some(int(&argv[5])?), now);
    Ok(Value::Int(1))
}

/// `RELEASE_LOCK`. KEYS: load lock. ARGV: token.
fn release_lock(k: &mut Keys, _now: i64, keys: &[Vec<u8>], argv: &[Vec<u8>]) -> RedisResult<Value> {
    let (Some(lock), Some(token)) = (keys.first(), argv.first()) else {
        return Err(err("RELEASE_LOCK: wrong arguments".into()));
    };
    if k.get(lock) == Some(token.as_slice()) {
        return Ok(Value::Int(k.del(lock)));
    }
    Ok(Value::Int(0))
}

// ---- sessions and rate limits (sessions.rs, rate_limit.rs) -------------------------------

/// `rate_limit::GCRA`, on the memory clock. KEYS: limit. ARGV: interval us, burst, cost.
fn gcra(k: &mut Keys, now_ms: i64, keys: &[Vec<u8>], argv: &[Vec<u8>]) -> RedisResult<Value> {
    let (Some(key), Some(interval), Some(burst), Some(cost)) =
        (keys.first(), argv.first(), argv.get(1), argv.get(2))
    else {
        return Err(err("GCRA: wrong arguments".into()));
    };
    let now = now_ms * 1000;
    let (interval, burst, cost) = (int(interval)?, int(burst)?, int(cost)?);
    let tolerance = interval * burst;
    let tat = match k.get(key) {
        Some(b) => text(b).parse::<f64>().map_or(now, |v| v as i64),
        None => now,
    }
    .max(now);
    let new_tat = tat + interval * cost;
    let allow_at = new_tat - tolerance;
    if now < allow_at {
        return Ok(Value::Array(vec![
            Value::Int(0),
            Value::Int(allow_at - now),
        ]));
    }
    let ttl_ms = (new_tat - now + 999) / 1000 + 1;
    k.set(key, new_tat.to_string().as_bytes(), Some(ttl_ms), now_ms);
    let remaining = (tolerance - (new_tat - now)).div_euclid(interval.max(1));
    Ok(Value::Array(vec![Value::Int(1), Value::Int(remaining)]))
}

fn hash_of<'a>(k: &'a Keys, key: &[u8]) -> Option<&'a BTreeMap<Vec<u8>, Vec<u8>>> {
    match k.map.get(key).map(|e| &e.value) {
        Some(Stored::Hash(h)) => Some(h),
        _ => None,
    }
}

/// `sessions::CREATE`. KEYS: session. ARGV: body, user, idle ms, lifetime ms.
fn create_session(
    k: &mut Keys,
    now: i64,
    keys: &[Vec<u8>],
    argv: &[Vec<u8>],
) -> RedisResult<Value> {
    let (Some(key), [body, user, idle, life, ..]) = (keys.first(), argv) else {
        return Err(err("CREATE: wrong arguments".into()));
    };
    let ends = now + int(life)?;
    let fields: BTreeMap<Vec<u8>, Vec<u8>> = [
        (b"body".to_vec(), body.clone()),
        (b"user".to_vec(), user.clone()),
        (b"created".to_vec(), now.to_string().into_bytes()),
        (b"ends".to_vec(), ends.to_string().into_bytes()),
    ]
    .into_iter()
    .collect();
    k.map.insert(
        key.clone(),
        Entry {
            value: Stored::Hash(fields),
            expires_at: Some(now + int(idle)?.min(int(life)?)),
        },
    );
    Ok(Value::Array(vec![Value::Int(now), Value::Int(ends)]))
}

/// `sessions::TOUCH`. KEYS: session. ARGV: idle ms. Returns [body, user, created, ends] or nil.
fn touch_session(k: &mut Keys, now: i64, keys: &[Vec<u8>], argv: &[Vec<u8>]) -> RedisResult<Value> {
    let (Some(key), Some(idle)) = (keys.first(), argv.first()) else {
        return Err(err("TOUCH: wrong arguments".into()));
    };
    let Some(h) = hash_of(k, key) else {
        return Ok(Value::Nil);
    };
    let field = |f: &str| h.get(f.as_bytes()).cloned().unwrap_or_default();
    let values = ["body", "user", "created", "ends"].map(field);
    let left = int(&values[3])? - now;
    if left <= 0 {
        k.del(key);
        return Ok(Value::Nil);
    }
    k.pexpire(key, int(idle)?.min(left), now);
    Ok(Value::Array(
        values.into_iter().map(Value::BulkString).collect(),
    ))
}

// ---- the write-behind queue's and the leases' scripts ---------------------------------------

/// `write_behind::APPEND`. KEYS: stream. ARGV: max length, entries.
fn append(k: &mut Keys, now: i64, keys: &[Vec<u8>], argv: &[Vec<u8>]) -> RedisResult<Value> {
    let (Some(stream), Some(max)) = (keys.first(), argv.first()) else {
        return Err(err("APPEND: wrong arguments".into()));
    };
    let len = k.stream(stream)?.map_or(0, |s| s.entries.len() as i64);
    let adding = argv.len() as i64 - 1;
    if len + adding > int(max)? {
        return Ok(Value::Int(-len));
    }
    for e in &argv[1..] {
        k.xadd(stream, b"*", vec![b"e".to_vec(), e.clone()], None, now)?;
    }
    Ok(Value::Int(len + adding))
}

/// `flusher::ACK`. KEYS: stream, lease. ARGV: token, ids.
fn ack(k: &mut Keys, _now: i64, keys: &[Vec<u8>], argv: &[Vec<u8>]) -> RedisResult<Value> {
    let (Some(stream), Some(lease), Some(token)) = (keys.first(), keys.get(1), argv.first()) else {
        return Err(err("ACK: wrong arguments".into()));
    };
    if k.get(lease) != Some(token.as_slice()) {
        return Ok(Value::Int(-1));
    }
    k.xdel(stream, &argv[1..]).map(Value::Int)
}

/// `lease::HOLD`. KEYS: lease. ARGV: token, ttl ms.
fn hold_lease(k: &mut Keys, now: i64, keys: &[Vec<u8>], argv: &[Vec<u8>]) -> RedisResult<Value> {
    let (Some(lease), Some(token), Some(ttl)) = (keys.first(), argv.first(), argv.get(1)) else {
        return Err(err("HOLD: wrong arguments".into()));
    };
    let free = match k.map.get(lease) {
        None => true,
        Some(_) => k.get(lease) == Some(token.as_slice()),
    };
    if !free {
        return Ok(Value::Int(0));
    }
    k.set(lease, token, Some(int(ttl)?), now);
    Ok(Value::Int(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_follow_redis() {
        assert!(glob(b"caas:{t1:User:*}", b"caas:{t1:User:42}"));
        assert!(!glob(b"caas:{t1:User:*}", b"caas:{t2:User:42}"));
        assert!(glob(b"a?c", b"abc"));
        assert!(glob(b"a[bx]c", b"axc"));
        assert!(!glob(b"a[^bx]c", b"abc"));
        assert!(glob(b"a\\*", b"a*"));
        assert!(!glob(b"a\\*", b"ab"));
    }

    fn cmd(args: &[&str]) -> Cmd {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c
    }

    #[test]
    fn keys_expire_on_the_memory_clock() {
        let clock = Clock::default();
        // Frozen, so the boundary is exact: running, a slow millisecond between the `SET` and
        // the first `advance` expired the key early (a CI failure).
        clock.freeze();
        let r = MemoryRedis::new(clock.clone());
        r.run(&cmd(&["SET", "k", "v", "PX", "1000"])).unwrap();
        assert_eq!(
            r.run(&cmd(&["GET", "k"])).unwrap(),
            Value::BulkString(b"v".to_vec())
        );
        clock.advance(std::time::Duration::from_millis(999));
        assert_eq!(
            r.run(&cmd(&["GET", "k"])).unwrap(),
            Value::BulkString(b"v".to_vec())
        );
        clock.advance(std::time::Duration::from_millis(1));
        assert_eq!(r.run(&cmd(&["GET", "k"])).unwrap(), Value::Nil);
    }

    #[test]
    fn the_put_is_fenced_by_the_generation_a_write_bumped() {
        let r = MemoryRedis::new(Clock::default());
        let put = |seen: &str| {
            let mut c = redis::cmd("EVALSHA");
            c.arg(crate::cache::scripts::PUT_IF_UNCHANGED.get_hash())
                .arg(2)
                .arg("d")
                .arg("g")
                .arg(seen)
                .arg("value")
                .arg(60_000);
            r.run(&c).unwrap()
        };
        // No generation yet: a loader that saw none may put.
        assert_eq!(put(""), Value::Int(1));
        let mut inv = redis::cmd("EVALSHA");
        inv.arg(crate::cache::scripts::INVALIDATE.get_hash())
            .arg(2)
            .arg("d")
            .arg("g")
            .arg(60_000)
            .arg("")
            .arg("");
        assert_eq!(r.run(&inv).unwrap(), Value::Int(1));
        assert_eq!(r.run(&cmd(&["GET", "d"])).unwrap(), Value::Nil);
        // A loader that read before the write (saw no generation) is refused.
        assert_eq!(put(""), Value::Int(0));
        assert_eq!(put("1"), Value::Int(1));
    }
}
