-- ttl.lua: expiration times of records (ktserver -scr).
--
-- `xt` inputs follow KT: seconds from now, or a negative number for an absolute UNIX time.
-- Every procedure answers 450 (logical inconsistency) when the record is absent.
--
--   touch   key, xt  -> xt: the record's new expiration time (its value is kept)
--   ttl     key      -> ttl: seconds until it expires, or -1 if it never does; xt
--   persist key      -> the record never expires any more
--   getex   key, xt  -> value, and the expiration is set as touch does (a sliding TTL)

kt = __kyototycoon__

local NEVER = 1099511627775  -- the expiration time of a record that does not expire

-- set the expiration of `key` (keeping its value); the value and the new xt, or nil
local function expire(key, xt)
   local found
   local function visit(rkey, rvalue, rxt)
      found = rvalue
      return rvalue, xt
   end
   if not kt.db:accept(key, visit) or not found then
      return nil
   end
   local _, newxt = kt.db:get(key)
   return found, newxt
end

function touch(inmap, outmap)
   local key = inmap.key
   local xt = tonumber(inmap.xt or "")
   if not key or not xt then
      return kt.RVEINVALID
   end
   local value, newxt = expire(key, xt)
   if not value then
      return kt.RVELOGIC
   end
   outmap.xt = newxt
   return kt.RVSUCCESS
end

function ttl(inmap, outmap)
   local key = inmap.key
   if not key then
      return kt.RVEINVALID
   end
   local value, xt = kt.db:get(key)
   if not value then
      return kt.RVELOGIC
   end
   outmap.xt = xt
   if xt >= NEVER then
      outmap.ttl = -1
   else
      outmap.ttl = math.max(0, xt - math.floor(kt.time()))
   end
   return kt.RVSUCCESS
end

function persist(inmap, outmap)
   local key = inmap.key
   if not key then
      return kt.RVEINVALID
   end
   if not expire(key, -NEVER) then
      return kt.RVELOGIC
   end
   return kt.RVSUCCESS
end

function getex(inmap, outmap)
   local key = inmap.key
   local xt = tonumber(inmap.xt or "")
   if not key or not xt then
      return kt.RVEINVALID
   end
   local value = expire(key, xt)
   if not value then
      return kt.RVELOGIC
   end
   outmap.value = value
   return kt.RVSUCCESS
end
