-- The moderation step of a room message, composed in front of the sequencing step (ingest.lua)
-- into ONE script by rooms/moderation.py: the marker line inside ingest_step() below is
-- replaced by the text of ingest.lua, which so becomes the body of that function. One call per
-- message, pipelined by the worker exactly like the plain ingest step. Being one script, the
-- checks, the sequencing and the bookkeeping are atomic: tokens are taken, slow mode and the
-- duplicate window advance only when the message was sequenced for the first time, so a resend
-- (same user and cmid) or a worker's re-run after a crash is never charged twice.
--
-- KEYS: the ingest step's keys, no more (the call stays as small as the plain one): KEYS[5]
-- is the dedupe record of (user, cmid), and the moderation keys are built here from the room's
-- hash tag, the prefix of KEYS[1] ('{r:<room>}:seq'), so they are in the same slot:
--   {r:<room>}:mod:cfg        the room's moderation config (hash, see below)
--   {r:<room>}:mod:x:<user>   sanctions (hash: ban | mute | shadow -> until ms, "0" = no end)
--   {r:<room>}:mod:u:<user>   the user's rate state (hash: bt tokens, bts ms, sl last ms,
--                             dh recent text hashes "<hash>:<ms>,...")
--   {r:<room>}:mod:rb         the room's token bucket (hash: t tokens, ts ms)
--   {r:<room>}:mod:mods       appointed moderators of the room (set of user ids)
--   {r:<room>}:mod:allow      the room's allow list (set of user ids)
-- Config hash fields (absent = off): wv (version of what the worker caches: the words, the
--   filter mode, whether dup_ms is on; bumped by every change of those), slow_ms, allow_only
--   ("1"), dup_ms, urate/uburst (per-user messages per second / burst), rrate/rburst (the room's).
--
-- ARGV: the ingest step's args, then one at the end:
--   ARGV[#ARGV]    "<rank> <kind> <text hash> <verdict> <hidden> <words version> <user id>"
--                  rank: 0 viewer, 1 moderator, 2 streamer, 3 admin (the token's role);
--                  kind: d for danmaku, p for a privileged kind (gift, superchat, system);
--                  verdict: 1 when the worker's word filter refused the text, else 0;
--                  hidden: 1 when ARGV[5] carries the hidden-for-others marker;
--                  text hash: 0 when the worker's config says duplicates are not checked;
--                  words version: the config's wv the worker's view was built from ("" = none)
--                  user id: the sender's, the rest of the string (it may hold spaces)
--
-- Returns what the ingest step returns, or:
--   {-2, code, ms, detail}  refused: nack code (banned, muted, unauthorized, filtered,
--                           rate_limited), ms (retry after, or what is left of a mute/ban;
--                           0 = no end), detail (why: ban, mute, allow_list, words, duplicate,
--                           slow, user_rate, room_rate)
--   {-3, wv}                the worker's view of the config is stale (wv changed): reload, call
--                           again
--   {-4, hidden}            the sender's shadow-ban state differs from ARGV's: call again
-- Nothing is written when it returns one of these.

local function active(v, now)
  -- a sanction field: nil = none, "0" = no end, else until ms
  if not v then return false, 0 end
  local u = tonumber(v)
  if u == 0 then return true, 0 end
  if u > now then return true, u - now end
  return false, 0
end

local function bucket(tokens, at, rate, burst, now)
  -- a token bucket's level now (full when it has never been used)
  if not tokens then return burst end
  return math.min(burst, tonumber(tokens) + (now - tonumber(at)) * rate / 1000)
end

local function moderate()
  if redis.call('EXISTS', KEYS[5]) == 1 then
    return nil  -- a resend of a sequenced message: the ingest step answers with its seq
  end
  local rank, kind, th, verdict, hidden_arg, wv, user =
    string.match(ARGV[#ARGV], '^(%d) (%a) (%d+) (%d) (%d) (%S*) (.*)$')
  rank = tonumber(rank)
  local prefix = string.sub(KEYS[1], 1, -4) .. 'mod:'  -- '{r:<room>}:seq' -> '{r:<room>}:mod:'
  local c = redis.call('HMGET', prefix .. 'cfg', 'wv', 'slow_ms', 'allow_only', 'dup_ms',
                       'urate', 'uburst', 'rrate', 'rburst')
  if (c[1] or '') ~= wv then
    return {-3, c[1] or ''}
  end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local privileged = rank >= 2
  local hidden = 0
  if not privileged then
    local s = redis.call('HMGET', prefix .. 'x:' .. user, 'ban', 'mute', 'shadow')
    local on, left = active(s[1], now)
    if on then return {-2, 'banned', left, 'ban'} end
    on, left = active(s[2], now)
    if on then return {-2, 'muted', left, 'mute'} end
    if kind == 'd' and active(s[3], now) then hidden = 1 end
  end
  local slow_ms, dup_ms = tonumber(c[2] or '0'), tonumber(c[4] or '0')
  local urate, rrate = tonumber(c[5] or '0'), tonumber(c[7] or '0')
  local is_mod = rank >= 1
  if not is_mod and (c[3] == '1' or slow_ms > 0 or dup_ms > 0 or urate > 0) then
    is_mod = redis.call('SISMEMBER', prefix .. 'mods', user) == 1
  end
  if c[3] == '1' and not is_mod and redis.call('SISMEMBER', prefix .. 'allow', user) == 0 then
    return {-2, 'unauthorized', 0, 'allow_list'}
  end
  if verdict == '1' then
    return {-2, 'filtered', 0, 'words'}
  end
  local state = {now = now}
  if not is_mod and (slow_ms > 0 or dup_ms > 0 or urate > 0) then
    local ukey = prefix .. 'u:' .. user
    local u = redis.call('HMGET', ukey, 'bt', 'bts', 'sl', 'dh')
    if slow_ms > 0 and u[3] and now - tonumber(u[3]) < slow_ms then
      return {-2, 'rate_limited', slow_ms - (now - tonumber(u[3])), 'slow'}
    end
    local recent = {}
    if dup_ms > 0 then
      for h, at in string.gmatch(u[4] or '', '(%d+):(%d+)') do
        if now - tonumber(at) < dup_ms then
          if h == th then return {-2, 'filtered', 0, 'duplicate'} end
          recent[#recent + 1] = h .. ':' .. at
        end
      end
      while #recent >= 8 do table.remove(recent, 1) end
      recent[#recent + 1] = th .. ':' .. now
    end
    local tokens, refill_ms = nil, 0
    if urate > 0 then
      local burst = tonumber(c[6] or '0')
      if burst < 1 then burst = urate end
      tokens = bucket(u[1], u[2], urate, burst, now)
      if tokens < 1 then
        return {-2, 'rate_limited', math.ceil((1 - tokens) * 1000 / urate), 'user_rate'}
      end
      refill_ms = math.ceil(1000 * burst / urate)  -- after this long unused, the bucket is full
    end
    state.ukey, state.tokens, state.recent = ukey, tokens, recent
    state.keep = math.max(slow_ms, dup_ms, refill_ms)
    state.slow, state.dup = slow_ms > 0, dup_ms > 0
  end
  if rrate > 0 and not privileged then
    local rburst = tonumber(c[8] or '0')
    if rburst < 1 then rburst = rrate end
    local r = redis.call('HMGET', prefix .. 'rb', 't', 'ts')
    local rt = bucket(r[1], r[2], rrate, rburst, now)
    if rt < 1 then
      return {-2, 'rate_limited', math.ceil((1 - rt) * 1000 / rrate), 'room_rate'}
    end
    state.rkey, state.rtokens, state.rkeep = prefix .. 'rb', rt, math.ceil(1000 * rburst / rrate)
  end
  if hidden ~= tonumber(hidden_arg) then
    return {-4, hidden}
  end
  return nil, state
end

local function commit(state)
  local now = state.now
  if state.ukey then
    local fields = {}
    if state.tokens then
      fields[#fields + 1] = 'bt'; fields[#fields + 1] = tostring(state.tokens - 1)
      fields[#fields + 1] = 'bts'; fields[#fields + 1] = now
    end
    if state.slow then fields[#fields + 1] = 'sl'; fields[#fields + 1] = now end
    if state.dup then
      fields[#fields + 1] = 'dh'; fields[#fields + 1] = table.concat(state.recent, ',')
    end
    if #fields > 0 then
      redis.call('HSET', state.ukey, unpack(fields))
      redis.call('PEXPIRE', state.ukey, math.max(1000, state.keep))
    end
  end
  if state.rkey then
    redis.call('HSET', state.rkey, 't', tostring(state.rtokens - 1), 'ts', now)
    redis.call('PEXPIRE', state.rkey, math.max(1000, state.rkeep))
  end
end

local function ingest_step()
--@@INGEST_STEP@@
end

local refusal, state = moderate()
if refusal then
  return refusal
end
local result = ingest_step()
if state and result[1] == 1 then
  commit(state)
end
return result
