-- One node's renewal of its leases on the cluster's shared limits, atomic in Redis
-- (src/cluster/node.rs sends it every TICK). Times are Redis's own clock (TIME), so every
-- node's leases lapse on one time base.
--
-- ARGV: prefix, node, instance, lease_ms, fallback_milli, n, then per scope five values:
--   scope, rate_total (milli-messages/s, 0: not shared), conns_total (0: not shared),
--   rate_want (milli-messages/s), conns_want.
-- Returns {status, now_ms, epoch_ms, rate_1, conns_1, rate_2, conns_2, ...}: status 0, or -1 with the
-- instance that holds this node's name as a third item (the node is refused).
--
-- Each scope's hash holds one field per node: "rate,conns,expiry_ms,rate_want,conns_want,
-- rate_total,conns_total,prev_rate,prev_conns,prev_until". A node is granted its fair share of the total by water-filling
-- over the live nodes' wants, never more than the total less what the others hold now, so
-- the leases in force never sum past the total; the others come down to their fair shares
-- at their own renewals, within one TICK. For two lease periods after this Redis's state
-- began (a first start, or a restart that lost it) no node is granted more than its
-- fallback share: nodes in fallback are not in the hash yet and hold that much already.

local prefix, node, instance = ARGV[1], ARGV[2], ARGV[3]
local lease = tonumber(ARGV[4])
local fallback = tonumber(ARGV[5]) / 1000
local n = tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local name_key = prefix .. ':node:' .. node
local holder = redis.call('GET', name_key)
if holder and holder ~= instance then
  return {-1, now, holder}
end
redis.call('SET', name_key, instance, 'PX', lease * 3)

local epoch_key = prefix .. ':epoch'
local epoch = tonumber(redis.call('GET', epoch_key))
if not epoch then
  epoch = now
  redis.call('SET', epoch_key, now)
end
-- An epoch ahead of this clock (a replica promoted whose clock is behind) is not young.
local young = now >= epoch and now - epoch < 2 * lease

-- The level below which every want is met in full: what `mine` gets of `total`.
local function fair(total, wants, mine)
  table.sort(wants)
  local left, count = total, #wants
  for _, w in ipairs(wants) do
    if w * count <= left then
      left = left - w
      count = count - 1
    else
      return math.min(mine, left / count)
    end
  end
  return mine
end

local out = {0, now, epoch}
-- What a node that was granted less holds may still be sending at for this long (it applies
-- a grant within a tick of the reply): the others count its old figures until then.
local GRACE = 300
-- The remainder of whole connections goes round the nodes in turns of this long.
local TURN = lease * 5
for i = 0, n - 1 do
  local b = 7 + i * 5
  local scope = ARGV[b]
  local rate_total, conns_total = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local rate_want, conns_want = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local my_rate_total, my_conns_total = rate_total, conns_total
  local key = prefix .. ':lease:' .. scope
  local fields = redis.call('HGETALL', key)
  local rate_held, conns_held = 0, 0
  local rate_wants = {rate_want}
  local conn_nodes = {{node, conns_want}}
  local mine = nil
  for j = 1, #fields, 2 do
    local who = fields[j]
    local v = {}
    for x in string.gmatch(fields[j + 1], '[^,]+') do
      v[#v + 1] = tonumber(x) or 0
    end
    local prev_r, prev_c = 0, 0
    if #v >= 10 and v[10] > now then prev_r, prev_c = v[8], v[9] end
    if #v < 7 or (v[3] <= now and (prev_r == 0 and prev_c == 0)) then
      redis.call('HDEL', key, who)
    elseif who == node then
      mine = {v[1], v[2], v[3], prev_r, prev_c, #v >= 10 and v[10] or 0}
    else
      local live = v[3] > now
      rate_held = rate_held + math.max(live and v[1] or 0, prev_r)
      conns_held = conns_held + math.max(live and v[2] or 0, prev_c)
      if live then
        rate_wants[#rate_wants + 1] = v[4]
        conn_nodes[#conn_nodes + 1] = {who, v[5]}
        -- Nodes configured differently: the smallest total holds.
        if v[6] > 0 and (rate_total == 0 or v[6] < rate_total) then rate_total = v[6] end
        if v[7] > 0 and (conns_total == 0 or v[7] < conns_total) then conns_total = v[7] end
      end
    end
  end
  local rate, conns = 0, 0
  if my_conns_total > 0 then
    -- Whole connections: each node's fair share rounded down, the remainder one each to the
    -- nodes with the largest fractions, in an order that turns every TURN so none starves.
    local wants = {}
    for k, c in ipairs(conn_nodes) do wants[k] = c[2] end
    local level = fair(conns_total, wants, math.huge)
    table.sort(conn_nodes, function(a, c) return a[1] < c[1] end)
    local base, left, candidates = {}, conns_total, {}
    for k, c in ipairs(conn_nodes) do
      local share = math.min(c[2], level)
      base[c[1]] = math.floor(share)
      left = left - base[c[1]]
      if share > base[c[1]] then candidates[#candidates + 1] = c[1] end
    end
    local mine_extra = 0
    if #candidates > 0 and left > 0 then
      local start = math.floor(now / TURN) % #candidates
      for k = 0, math.min(left, #candidates) - 1 do
        if candidates[(start + k) % #candidates + 1] == node then mine_extra = 1 end
      end
    end
    conns = base[node] + mine_extra
    conns = math.max(0, math.min(conns, conns_total - conns_held))
    if young then conns = math.min(conns, math.max(1, math.floor(conns_total * fallback))) end
  end
  if my_rate_total > 0 and not (my_conns_total > 0 and conns == 0) then
    rate = math.floor(fair(rate_total, rate_wants, rate_want))
    rate = math.max(0, math.min(rate, rate_total - rate_held))
    if young then rate = math.min(rate, math.floor(rate_total * fallback)) end
  end
  -- Granted less than before: the old figures count for the others until GRACE has passed.
  local prev_r, prev_c, prev_until = 0, 0, 0
  if mine then
    if mine[6] > now then prev_r, prev_c, prev_until = mine[4], mine[5], mine[6] end
    local old_r = mine[3] > now and mine[1] or 0
    local old_c = mine[3] > now and mine[2] or 0
    if rate < old_r or conns < old_c then
      prev_r, prev_c, prev_until = math.max(prev_r, old_r), math.max(prev_c, old_c), now + GRACE
    end
  end
  -- A node without connections sends nothing: its wanted rate is not counted either.
  local stored_want = rate_want
  if my_conns_total > 0 and conns == 0 then stored_want = 0 end
  redis.call('HSET', key, node, table.concat({rate, conns, now + lease, stored_want, conns_want,
    my_rate_total, my_conns_total, prev_r, prev_c, prev_until}, ','))
  redis.call('PEXPIRE', key, lease * 3)
  out[#out + 1] = rate
  out[#out + 1] = conns
end
return out
