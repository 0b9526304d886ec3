local counter = 0
local tid = 0
local threads = {}
local body = os.getenv("TAG_BODY")
local base = os.getenv("TAG_BASE") or "/bench/small/"
local run = os.getenv("RUN") or "r"
function setup(thread) thread:set("tid", #threads + 1); table.insert(threads, thread) end
function init(args) tid = tonumber(wrk.thread:get("tid")) or 0 end
request = function()
  counter = counter + 1
  return wrk.format("PUT", base .. run .. "-" .. tid .. "-" .. counter, {["Content-Type"]="application/json"}, body)
end
