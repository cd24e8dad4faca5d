-- counters.lua: decimal counters and a fixed-window rate limiter (ktserver -scr).
--
-- Counters are decimal strings, so a plain get reads them (KT's own increment stores an
-- 8-byte binary number).  Every update is one atomic db:accept.
--
--   incr      key, [num=1], [xt]   -> num: the new value (created at 0 + num; xt sets the
--                                     expiration, kept otherwise). 450 if the record is
--                                     not an integer, 400 for a bad num.
--   decr      key, [num=1], [xt]   -> num: as incr, subtracting.
--   ratelimit key, limit, window   -> count, allowed ("true"/"false"), reset (seconds
--                                     until the window ends): counts a hit in the current
--                                     window of `window` seconds, which starts at the
--                                     first hit and ends when the record expires.

kt = __kyototycoon__

local function integer(text)
   local num = tonumber(text)
   if num == nil or num ~= math.floor(num) or num ~= num then return nil end
   return num
end

local function add(inmap, outmap, sign)
   local key = inmap.key
   local num = integer(inmap.num or "1")
   local xt = inmap.xt and tonumber(inmap.xt)
   if not key or not num or (inmap.xt and not xt) then
      return kt.RVEINVALID
   end
   local result, bad
   local function visit(rkey, rvalue, rxt)
      local current = 0
      if rvalue then
         current = integer(rvalue)
         if not current then
            bad = true
            return kt.Visitor.NOP
         end
      end
      result = current + sign * num
      return string.format("%d", result), xt
   end
   if not kt.db:accept(key, visit) then
      return kt.RVEINTERNAL
   end
   if bad then
      return kt.RVELOGIC
   end
   outmap.num = string.format("%d", result)
   return kt.RVSUCCESS
end

function incr(inmap, outmap)
   return add(inmap, outmap, 1)
end

function decr(inmap, outmap)
   return add(inmap, outmap, -1)
end

function ratelimit(inmap, outmap)
   local key = inmap.key
   local limit = integer(inmap.limit or "")
   local window = integer(inmap.window or "")
   if not key or not limit or not window or window < 1 then
      return kt.RVEINVALID
   end
   local count, expires
   local now = kt.time()
   local function visit(rkey, rvalue, rxt)
      if rvalue then
         count = (integer(rvalue) or 0) + 1
         expires = rxt
         return string.format("%d", count)
      end
      count = 1
      expires = math.floor(now) + window
      return "1", window
   end
   if not kt.db:accept(key, visit) then
      return kt.RVEINTERNAL
   end
   outmap.count = count
   outmap.allowed = count <= limit
   outmap.reset = math.max(0, math.ceil(expires - now))
   return kt.RVSUCCESS
end
