-- fuzz.lua: the procedures the differential fuzzer calls (tests/difffuzz): each reads or
-- writes the first database through the kt module and answers deterministically.
kt = __kyototycoon__
db = kt.db

-- every input back, and how many there were
function echo(inmap, outmap)
   local n = 0
   for k, v in pairs(inmap) do
      outmap[k] = v
      n = n + 1
   end
   outmap.n = n
   return kt.RVSUCCESS
end

function put(inmap, outmap)
   if not inmap.key then return kt.RVEINVALID end
   if not db:set(inmap.key, inmap.value or "") then
      outmap.error = tostring(db:error())
      return kt.RVELOGIC
   end
   return kt.RVSUCCESS
end

function fetch(inmap, outmap)
   if not inmap.key then return kt.RVEINVALID end
   local value, xt = db:get(inmap.key)
   if not value then return kt.RVELOGIC end
   outmap.value = value
   outmap.expires = tostring(xt < 1e10)
   return kt.RVSUCCESS
end

-- the first records in database order, through a cursor
function walk(inmap, outmap)
   local cur = db:cursor()
   cur:jump()
   local i = 0
   while i < 20 do
      local key = cur:get_key(true)
      if not key then break end
      i = i + 1
      outmap[string.format("%02d", i)] = key
   end
   cur:disable()
   outmap.count = db:count()
   return kt.RVSUCCESS
end

function incr(inmap, outmap)
   local num = db:increment(inmap.key or "counter", 1)
   outmap.num = tostring(num)
   return kt.RVSUCCESS
end

function fail(inmap, outmap)
   error("deliberate failure")
end
