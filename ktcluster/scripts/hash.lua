-- hash.lua: records holding fields, like Redis hashes (ktserver -scr).
--
-- The value of record `key` is its fields serialized with kt.mapdump, so a client can
-- also read it whole (and decode it as KT's map serialization).  Every change is one
-- atomic db:accept.
--
--   hset    key, [xt], FIELD=VALUE...  -> added: the number of new fields
--   hget    key, field                 -> value; nothing when the record or field is absent
--   hgetall key                        -> every FIELD=VALUE
--   hdel    key, FIELD=...             -> removed: the number of fields removed (the
--                                         record goes when its last field does)
--   hincr   key, field, [num=1]        -> num: the field's new value (an integer)
--   hlen    key                        -> count: the number of fields

kt = __kyototycoon__

local RESERVED = {key = true, xt = true}

-- the inputs naming fields (all but `key` and `xt`)
local function field_inputs(inmap)
   local fields, count = {}, 0
   for name, value in pairs(inmap) do
      if not RESERVED[name] then
         fields[name] = value
         count = count + 1
      end
   end
   return fields, count
end

local function load(value)
   if value then return kt.mapload(value) end
   return {}
end

local function count_of(map)
   local count = 0
   for _ in pairs(map) do count = count + 1 end
   return count
end

function hset(inmap, outmap)
   local key = inmap.key
   local xt = inmap.xt and tonumber(inmap.xt)
   local fields, count = field_inputs(inmap)
   if not key or count < 1 or (inmap.xt and not xt) then
      return kt.RVEINVALID
   end
   local added = 0
   local function visit(rkey, rvalue)
      local map = load(rvalue)
      for name, value in pairs(fields) do
         if map[name] == nil then added = added + 1 end
         map[name] = value
      end
      return kt.mapdump(map), xt
   end
   if not kt.db:accept(key, visit) then
      return kt.RVEINTERNAL
   end
   outmap.added = added
   return kt.RVSUCCESS
end

function hget(inmap, outmap)
   local key, field = inmap.key, inmap.field
   if not key or not field then
      return kt.RVEINVALID
   end
   local value = kt.db:get(key)
   if value then
      outmap.value = kt.mapload(value)[field]
   end
   return kt.RVSUCCESS
end

function hgetall(inmap, outmap)
   local key = inmap.key
   if not key then
      return kt.RVEINVALID
   end
   local value = kt.db:get(key)
   if value then
      for name, field in pairs(kt.mapload(value)) do
         outmap[name] = field
      end
   end
   return kt.RVSUCCESS
end

function hdel(inmap, outmap)
   local key = inmap.key
   local fields, count = field_inputs(inmap)
   if not key or count < 1 then
      return kt.RVEINVALID
   end
   local removed = 0
   local function visit(rkey, rvalue)
      if not rvalue then return kt.Visitor.NOP end
      local map = kt.mapload(rvalue)
      for name in pairs(fields) do
         if map[name] ~= nil then
            removed = removed + 1
            map[name] = nil
         end
      end
      if removed == 0 then return kt.Visitor.NOP end
      if next(map) == nil then return kt.Visitor.REMOVE end
      return kt.mapdump(map)
   end
   if not kt.db:accept(key, visit) then
      return kt.RVEINTERNAL
   end
   outmap.removed = removed
   return kt.RVSUCCESS
end

function hincr(inmap, outmap)
   local key, field = inmap.key, inmap.field
   local num = tonumber(inmap.num or "1")
   if not key or not field or not num or num ~= math.floor(num) then
      return kt.RVEINVALID
   end
   local result, bad
   local function visit(rkey, rvalue)
      local map = load(rvalue)
      local current = tonumber(map[field] or "0")
      if not current or current ~= math.floor(current) then
         bad = true
         return kt.Visitor.NOP
      end
      result = current + num
      map[field] = string.format("%d", result)
      return kt.mapdump(map)
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

function hlen(inmap, outmap)
   local key = inmap.key
   if not key then
      return kt.RVEINVALID
   end
   local value = kt.db:get(key)
   outmap.count = value and count_of(kt.mapload(value)) or 0
   return kt.RVSUCCESS
end
