-- wrk script: POST /api/v1/reservations, one seat per hold, every request a
-- different seat, tokens rotated so each member's holds spread evenly.
-- Data file (k6/wrk/prepare.py holds ...) in HOLD_DATA: line 1 the seats per
-- concert, line 2 the concert ids, then one ACTIVE queue token per line.
-- Requests of thread t (of WRK_THREADS) take global seat indices t, t+T, ...
-- Counts statuses; prints them at the end.

local data = os.getenv("HOLD_DATA")
local nthreads = tonumber(os.getenv("WRK_THREADS") or "2")

local next_id = 0
local threads = {}

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local seats, concerts, tokens
local i = 0
statuses = {} -- global: done() reads it from each thread

function init(args)
  local f = assert(io.open(data, "r"))
  seats = tonumber(f:read("*l"))
  concerts = {}
  for c in f:read("*l"):gmatch("%d+") do
    table.insert(concerts, c)
  end
  tokens = {}
  for line in f:lines() do
    if #line > 0 then table.insert(tokens, line) end
  end
  f:close()
end

function request()
  local g = id + i * nthreads
  i = i + 1
  local concert = concerts[math.floor(g / seats) + 1]
  if concert == nil then
    -- Out of seats: keep asking for the last seat (answered 409, counted).
    concert = concerts[#concerts]
    g = #concerts * seats - 1
  end
  local body = '{"concertId":' .. concert .. ',"seatNumbers":[' .. (g % seats + 1) .. ']}'
  return wrk.format("POST", "/api/v1/reservations", {
    ["Content-Type"] = "application/json",
    ["X-Queue-Token"] = tokens[(g % #tokens) + 1],
  }, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  -- Per-thread status counts live in the threads' own Lua states.
  local total = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for k, v in pairs(s) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do
    io.write(string.format("status %s: %d\n", k, v))
  end
end
