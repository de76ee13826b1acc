//! The Lua scripts that make cache writes safe under concurrency. Each runs atomically in Redis
//! and touches only keys of one hash tag (see [`keys`](super::keys)).

use std::sync::LazyLock;

use redis::Script;

/// After a miss: store the loaded value only if no write bumped the generation since the
/// loader read it. This is what closes the stale-set race: a reader that loaded an old
/// document while a writer updated it cannot put the old document back.
///
/// KEYS: data, generation. ARGV: generation seen before loading ('' for none), value, ttl ms.
pub(crate) static PUT_IF_UNCHANGED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local g = redis.call('GET', KEYS[2]) or ''
if g ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
",
    )
});

/// After a write: bump the generation (fencing in-flight loaders), drop the entry and tell
/// other instances to drop their in-process copy.
///
/// KEYS: data, generation. ARGV: generation ttl ms, channel ('' for none), message.
/// Returns 1 if an entry was dropped, 0 if there was none.
pub(crate) static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
local n = redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return n
",
    )
});

/// After a write, write-through: bump the generation, then store the new value unless an
/// equal or newer version is already cached (two writers finishing out of order cannot leave
/// the older value behind).
///
/// A delete writes a tombstone, `<version>|` with no body, through this script too: reads take
/// it for a miss, and it fences out every write-through put of that version or older (an
/// update whose cache step lands after the delete's cannot put the deleted document back).
///
/// KEYS: data, generation. ARGV: generation ttl ms, channel, message, version, value, ttl ms.
pub(crate) static WRITE_THROUGH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
local cur = redis.call('GET', KEYS[1])
if cur then
  local v = tonumber(string.match(cur, '^(%d+)|'))
  if v and v >= tonumber(ARGV[4]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[5], 'PX', ARGV[6])
return 1
",
    )
});

/// Releases the stampede lock if this caller still holds it.
///
/// KEYS: load lock. ARGV: token.
pub(crate) static RELEASE_LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});
