local counter = 0
local tid = 0
local threads = {}
function setup(thread) thread:set("tid", #threads + 1); table.insert(threads, thread) end
function init(args) tid = tonumber(wrk.thread:get("tid")) or 0 end
request = function()
  counter = counter + 1
  return wrk.format("PUT", wrk.path, {["Content-Type"]="text/plain"}, "k" .. tid .. "=v" .. counter)
end
