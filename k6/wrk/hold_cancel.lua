-- wrk script for the HTTP soak (k6/soak.sh): POST /api/v1/reservations of
-- one seat, and for each hold answered 201 a DELETE /api/v1/reservations/{id}
-- with its owner's queue token, forever. Seats cycle over every seat of the
-- concerts (a cancelled seat is free again); the token of seat index g is
-- token g mod #tokens, so the owner of a hold is found from its answer's
-- concertId and seatNumbers. Data file as for hold.lua
-- (k6/wrk/prepare.py holds ...) in HOLD_DATA.

local data = os.getenv("HOLD_DATA")
local nthreads = tonumber(os.getenv("WRK_THREADS") or "2")

local next_id = 0
local threads = {}

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local seats, concerts, index_of, tokens
local i = 0
local cancels = {} -- {reservation id, token}, oldest first
statuses = {}

function init(args)
  local f = assert(io.open(data, "r"))
  seats = tonumber(f:read("*l"))
  concerts, index_of = {}, {}
  for c in f:read("*l"):gmatch("%d+") do
    table.insert(concerts, c)
    index_of[c] = #concerts - 1
  end
  tokens = {}
  for line in f:lines() do
    if #line > 0 then table.insert(tokens, line) end
  end
  f:close()
end

local function token_of(g)
  return tokens[(g % #tokens) + 1]
end

function request()
  local pending = table.remove(cancels, 1)
  if pending ~= nil then
    return wrk.format("DELETE", "/api/v1/reservations/" .. pending[1], { ["X-Queue-Token"] = pending[2] })
  end
  local g = (id + i * nthreads) % (#concerts * seats)
  i = i + 1
  local concert = concerts[math.floor(g / seats) + 1]
  local body = '{"concertId":' .. concert .. ',"seatNumbers":[' .. (g % seats + 1) .. ']}'
  return wrk.format("POST", "/api/v1/reservations", {
    ["Content-Type"] = "application/json",
    ["X-Queue-Token"] = token_of(g),
  }, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 201 then
    local reservation = body:match('"id":(%d+)')
    local concert = body:match('"concertId":(%d+)')
    local seat = body:match('"seatNumbers":%[(%d+)')
    if reservation and concert and seat and index_of[concert] then
      local g = index_of[concert] * seats + tonumber(seat) - 1
      table.insert(cancels, { reservation, token_of(g) })
    end
  end
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for k, v in pairs(s) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do
    io.write(string.format("status %s: %d\n", k, v))
  end
end
