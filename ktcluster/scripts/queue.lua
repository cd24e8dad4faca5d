-- queue.lua: FIFO queues and priority queues of records (ktserver -scr).
--
-- FIFO queue `q` (any database type): items are the records "q:1", "q:2"... and the
-- records "q:head" and "q:tail" hold the last popped and the last pushed number.  A push
-- and a pop each change two records in one atomic db:accept_bulk, so concurrent pushers
-- and poppers never lose or duplicate an item.
--
--   qpush  queue, value   -> id: the item's number
--   qpop   queue          -> id, value of the oldest item; nothing when the queue is empty
--   qpeek  queue          -> id, value of the oldest item, left in place
--   qlen   queue          -> length
--
-- Priority queue `q` (needs an ordered database: "+", "%", .kct, .kcf): items are the
-- records "q#PPPPPPPPPPPPPPP:SSSSSSSSSSSSSSS" (priority, then arrival order).
--
--   pqpush queue, priority, value -> id; priority: an integer 0 .. 10^15-1, 0 first
--   pqpop  queue                  -> priority, value of the first item; nothing when empty

kt = __kyototycoon__

local RETRIES = 64

local function number(text)
   return tonumber(text or "0") or 0
end

local function item_key(queue, id)
   return queue .. ":" .. string.format("%d", id)
end

-- the numbers stored in "q:head" and "q:tail" now
local function bounds(db, queue)
   return number(db:get(queue .. ":head")), number(db:get(queue .. ":tail"))
end

function qpush(inmap, outmap)
   local queue, value = inmap.queue, inmap.value
   if not queue or not value then
      return kt.RVEINVALID
   end
   local db = kt.db
   local tail_key = queue .. ":tail"
   for _ = 1, RETRIES do
      local _, tail = bounds(db, queue)
      local id = tail + 1
      local claimed = false
      -- claim number `id` if the tail has not moved, and store the item with it
      local function visit(key, current)
         if key == tail_key then
            if number(current) ~= tail then return kt.Visitor.NOP end
            claimed = true
            return string.format("%d", id)
         end
         if claimed then return value end
         return kt.Visitor.NOP
      end
      if not db:accept_bulk({tail_key, item_key(queue, id)}, visit) then
         return kt.RVEINTERNAL
      end
      if claimed then
         outmap.id = id
         return kt.RVSUCCESS
      end
   end
   return kt.RVEINTERNAL
end

local function take(inmap, outmap, remove)
   local queue = inmap.queue
   if not queue then
      return kt.RVEINVALID
   end
   local db = kt.db
   local head_key = queue .. ":head"
   for _ = 1, RETRIES do
      local head, tail = bounds(db, queue)
      if head >= tail then
         return kt.RVSUCCESS
      end
      local id = head + 1
      local found
      -- item `id` exists only while the head is still `head`: take it and advance the head
      local function visit(key, current)
         if key == head_key then
            if found and remove then return string.format("%d", id) end
            return kt.Visitor.NOP
         end
         found = current
         if current and remove then return kt.Visitor.REMOVE end
         return kt.Visitor.NOP
      end
      if not db:accept_bulk({item_key(queue, id), head_key}, visit, remove) then
         return kt.RVEINTERNAL
      end
      if found then
         outmap.id = id
         outmap.value = found
         return kt.RVSUCCESS
      end
      if number(db:get(head_key)) == head then
         -- the head has not moved: item `id` was claimed by a push that has not stored it
         return kt.RVSUCCESS
      end
   end
   return kt.RVEINTERNAL
end

function qpop(inmap, outmap)
   return take(inmap, outmap, true)
end

function qpeek(inmap, outmap)
   return take(inmap, outmap, false)
end

function qlen(inmap, outmap)
   local queue = inmap.queue
   if not queue then
      return kt.RVEINVALID
   end
   local head, tail = bounds(kt.db, queue)
   outmap.length = tail - head
   return kt.RVSUCCESS
end

function pqpush(inmap, outmap)
   local queue, value = inmap.queue, inmap.value
   local priority = tonumber(inmap.priority or "")
   if not queue or not value or not priority or priority ~= math.floor(priority) or priority < 0
      or priority >= 1e15 then
      return kt.RVEINVALID
   end
   local seq = kt.db:increment(queue .. "@seq", 1)
   if not seq then
      return kt.RVEINTERNAL
   end
   local key = string.format("%s#%015d:%015d", queue, priority, seq)
   if not kt.db:add(key, value) then
      return kt.RVEINTERNAL
   end
   outmap.id = seq
   return kt.RVSUCCESS
end

function pqpop(inmap, outmap)
   local queue = inmap.queue
   if not queue then
      return kt.RVEINVALID
   end
   local prefix = queue .. "#"
   local cur = kt.db:cursor()
   local popped
   -- the first record at or after the prefix, taken if it is one of ours
   local function visit(key, value)
      if string.sub(key, 1, #prefix) ~= prefix then return kt.Visitor.NOP end
      popped = {key, value}
      return kt.Visitor.REMOVE
   end
   if cur:jump(prefix) then
      cur:accept(visit)
   end
   cur:disable()
   if popped then
      outmap.priority = tonumber(string.sub(popped[1], #prefix + 1, #prefix + 15))
      outmap.value = popped[2]
   end
   return kt.RVSUCCESS
end
