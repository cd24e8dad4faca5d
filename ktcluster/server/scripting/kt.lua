-- The `kt` module (__kyototycoon__) of the embedded server, as ktserver's myscript.cc
-- defines it, and the procedure dispatcher of one Lua state.
--
-- Run once per Lua state by ktcluster/server/scripting.py as
--     chunk(P, info)
-- P: the Python primitives (ktcluster.server.scripting.kt.KtHost) as a table of functions;
-- info: thid, version, dbs (Python handles of the server's databases, in order),
-- names (their names, sorted, each with its 1-based index), count (hook period).
-- It defines the global __kyototycoon__ and returns the functions Python calls:
-- load(script), call(name, inmap, deadline), finish(), new_table(), and the
-- trampolines through which Python storage calls back Lua visitors and processors.
--
-- Argument checks, defaults and Lua <-> C conversions follow myscript.cc function by
-- function: a bad call raises "<C function name>: invalid arguments" (no position), a
-- failed database operation returns false/nil and leaves its error in db:error().

local P, info = ...

local type, select, tostring, tonumber, next, rawget, error, pcall, setmetatable =
   type, select, tostring, tonumber, next, rawget, error, pcall, setmetatable
local floor, format = math.floor, string.format
local sethook, os_time = debug.sethook, os.time
local G = _G

-- -- conversions (lua_tolstring, lua_tonumber, StringBuilder) --------------------------------

local function invarg(func)
   error(func .. ": invalid arguments", 0)
end

-- lua_tolstring: strings as they are, numbers in "%.14g", anything else nil
local function tolstr(v)
   local t = type(v)
   if t == "string" then return v end
   if t == "number" then return tostring(v) end
   return nil
end

-- lua_isstring
local function isstr(v)
   local t = type(v)
   return t == "string" or t == "number"
end

-- lua_tonumber: numbers and numeric strings, anything else 0
local function tonum(v)
   return tonumber(v) or 0
end

-- a number as myscript.cc writes it into a string: "%lld" when integral, "%f" otherwise
-- (string.format performs the same C conversions as ktserver's snprintf)
local function numstr(n)
   if n == floor(n) then return format("%d", n) end
   return format("%f", n)
end

-- StringBuilder: numbers, booleans and strings; nil for the rest
local function valstr(v)
   local t = type(v)
   if t == "string" then return v end
   if t == "number" then return numstr(v) end
   if t == "boolean" then return v and "true" or "false" end
   return nil
end

-- a key or value of set_bulk / mapdump: numbers and strings only
local function recstr(v)
   local t = type(v)
   if t == "string" then return v end
   if t == "number" then return numstr(v) end
   return nil
end

-- an optional expiration argument: nil (no expiration) or lua_tonumber of it
local function xtarg(n, pos, v)
   if n >= pos and v ~= nil then return tonum(v) end
   return nil
end

-- a map table from a flat array {k1, v1, k2, v2, ...}, inserted in that order
local function maptable(flat)
   if flat == nil then return nil end
   local t = {}
   for i = 1, #flat, 2 do
      t[flat[i]] = flat[i + 1]
   end
   return t
end

-- the strings of the array part of a table (lua_objlen + rawgeti + lua_tolstring)
local function keylist(t)
   local keys, n = {}, 0
   for i = 1, #t do
      local k = tolstr(rawget(t, i))
      if k ~= nil then
         n = n + 1
         keys[n] = k
      end
   end
   return keys, n
end

-- the records of a map table whose key and value are strings or numbers, as a flat array
-- {k1, v1, k2, v2, ...} (next() order) and its length
local function flatmap(t)
   local flat, count = {}, 0
   local k, v = next(t)
   while k ~= nil do
      local ks, vs = recstr(k), recstr(v)
      if ks ~= nil and vs ~= nil then
         flat[count + 1] = ks
         flat[count + 2] = vs
         count = count + 2
      end
      k, v = next(t, k)
   end
   return flat, count
end

local function setmeta(obj, cls)
   local meta = cls.meta_
   if type(meta) == "table" then setmetatable(obj, meta) end
   return obj
end

local kt = {}

-- -- deadline: a count hook that ends a procedure running past -tout ------------------------

local COUNT = info.count
local coarse = nil     -- os.time() second from which Python is asked whether time is up
local hook

local function timeout()
   -- from now on every instruction fails until the call returns to Python, so that no
   -- pcall in the script can swallow the error for long
   sethook(hook, "", 1)
   error("the procedure ran past the request timeout", 0)
end

hook = function()
   if coarse and os_time() >= coarse and P.expired() then timeout() end
end

sethook(hook, "", COUNT)

-- coroutines have hooks of their own
do
   local create, resume, unpack, maxn = coroutine.create, coroutine.resume, unpack, table.maxn
   coroutine.create = function(f)
      local co = create(f)
      sethook(co, hook, "", COUNT)
      return co
   end
   coroutine.wrap = function(f)
      local co = coroutine.create(f)
      return function(...)
         local res = {resume(co, ...)}
         if not res[1] then error(res[2], 0) end
         return unpack(res, 2, maxn(res))
      end
   end
end

-- -- module functions (define_module) -------------------------------------------------------

-- kt.<op>(string): nothing for an argument that is not a string (or a number)
local function of_string(op)
   local func, prim = "kt_" .. op, P[op]
   return function(...)
      if select("#", ...) ~= 1 then invarg(func) end
      local s = tolstr((...))
      if s == nil then return end
      return prim(s)
   end
end

kt.atoi = of_string("atoi")
kt.atoix = of_string("atoix")
kt.atof = of_string("atof")
kt.hash_murmur = of_string("hash_murmur")
kt.hash_fnv = of_string("hash_fnv")

function kt.levdist(...)
   local n = select("#", ...)
   if n < 2 then invarg("kt_levdist") end
   local a, b, utf = ...
   a, b = tolstr(a), tolstr(b)
   if a == nil or b == nil then invarg("kt_levdist") end
   return P.levdist(a, b, n > 2 and not not utf)
end

function kt.time(...)
   if select("#", ...) ~= 0 then invarg("kt_time") end
   return P.time()
end

function kt.sleep(...)
   local n = select("#", ...)
   if n > 1 then invarg("kt_sleep") end
   if P.sleep(n > 0 and tonum((...)) or 0) then timeout() end
end

function kt.pack(...)
   local n = select("#", ...)
   if n < 1 then invarg("kt_pack") end
   local fmt = tolstr((...))
   if fmt == nil then invarg("kt_pack") end
   -- the elements: numbers and strings as they are, the array part of tables, 0 for the rest
   local nums, count = {}, 0
   for i = 2, n do
      local v = select(i, ...)
      local t = type(v)
      if t == "table" then
         for j = 1, #v do
            count = count + 1
            nums[count] = tonum(rawget(v, j))
         end
      else
         count = count + 1
         nums[count] = tonum(v)
      end
   end
   return P.pack(fmt, nums, count)
end

function kt.unpack(...)
   if select("#", ...) ~= 2 then invarg("kt_unpack") end
   local fmt, data = ...
   fmt = tolstr(fmt)
   if fmt == nil then invarg("kt_unpack") end
   return P.unpack(fmt, tolstr(data) or "")
end

function kt.split(...)
   local n = select("#", ...)
   if n < 1 then invarg("kt_split") end
   local s, delims = ...
   s = tolstr(s)
   if s == nil then invarg("kt_split") end
   return P.split(s, n > 1 and tolstr(delims) or nil)
end

function kt.codec(...)
   if select("#", ...) ~= 2 then invarg("kt_codec") end
   local mode, s = ...
   mode, s = tolstr(mode), tolstr(s)
   if mode == nil or s == nil then invarg("kt_codec") end
   return P.codec(mode, s)
end

function kt.bit(...)
   local n = select("#", ...)
   if n < 2 then invarg("kt_bit") end
   local mode, num, aux = ...
   mode = tolstr(mode)
   if mode == nil then invarg("kt_bit") end
   return P.bit(mode, tonum(num), n > 2 and tonum(aux) or 0)
end

-- kt.<op>(text, pattern, [alt]) (strstr, regex; strfwm and strbwm take no alt)
local function of_text_pattern(op, takes_alt)
   local func, prim = "kt_" .. op, P[op]
   return function(...)
      local n = select("#", ...)
      if n < 2 then invarg(func) end
      local s, pat, alt = ...
      s, pat = tolstr(s), tolstr(pat)
      if s == nil or pat == nil then invarg(func) end
      if takes_alt then return prim(s, pat, n > 2 and tolstr(alt) or nil) end
      return prim(s, pat)
   end
end

kt.strstr = of_text_pattern("strstr", true)
kt.strfwm = of_text_pattern("strfwm", false)
kt.strbwm = of_text_pattern("strbwm", false)
kt.regex = of_text_pattern("regex", true)

function kt.arraydump(...)
   local t = ...
   if select("#", ...) ~= 1 or type(t) ~= "table" then invarg("kt_arraydump") end
   local vals, count = {}, 0
   for i = 1, #t do
      local v = recstr(rawget(t, i))
      if v ~= nil then
         count = count + 1
         vals[count] = v
      end
   end
   return P.arraydump(vals, count)
end

function kt.arrayload(...)
   if select("#", ...) ~= 1 then invarg("kt_arrayload") end
   local s = tolstr((...))
   if s == nil then invarg("kt_arrayload") end
   return P.arrayload(s)
end

function kt.mapdump(...)
   local t = ...
   if select("#", ...) ~= 1 or type(t) ~= "table" then invarg("kt_mapdump") end
   local flat, count = flatmap(t)
   return P.mapdump(flat, count)
end

function kt.mapload(...)
   if select("#", ...) ~= 1 then invarg("kt_mapload") end
   local s = tolstr((...))
   if s == nil then invarg("kt_mapload") end
   return maptable(P.mapload(s))
end

-- -- Error (define_err) --------------------------------------------------------------------

local CODENAMES = {
   [0] = "success", "not implemented", "invalid operation", "no repository", "no permission",
   "broken file", "record duplication", "no record", "logical inconsistency", "system error",
}

local function codename(code)
   local c = tonum(code)
   if c ~= c or c < 0 then return "miscellaneous error" end
   return CODENAMES[floor(c)] or "miscellaneous error"
end

local function err_set(...)
   local self, code, message = ...
   if select("#", ...) ~= 3 or type(self) ~= "table" then invarg("err_set") end
   if tonumber(code) ~= nil and isstr(message) then
      self.code_ = code
      self.message_ = message
   end
   return nil
end

local function err_code(...)
   local self = ...
   if select("#", ...) ~= 1 or type(self) ~= "table" then invarg("err_code") end
   return self.code_
end

local function err_name(...)
   local self = ...
   if select("#", ...) ~= 1 or type(self) ~= "table" then invarg("err_name") end
   return codename(self.code_)
end

local function err_message(...)
   local self = ...
   if select("#", ...) ~= 1 or type(self) ~= "table" then invarg("err_message") end
   return self.message_
end

local function err_tostring(...)
   local self = ...
   if select("#", ...) ~= 1 or type(self) ~= "table" then invarg("err_tostring") end
   return codename(self.code_) .. ": " .. (tolstr(self.message_) or "(null)")
end

local Error = {
   SUCCESS = 0, NOIMPL = 1, INVALID = 2, NOREPOS = 3, NOPERM = 4, BROKEN = 5, DUPREC = 6,
   NOREC = 7, LOGIC = 8, SYSTEM = 9, MISC = 15,
}

function Error.new(...)
   local n = select("#", ...)
   local cls, code, message = ...
   if n < 1 or type(cls) ~= "table" then invarg("err_new") end
   if n > 3 then invarg("err_new") end
   local obj = {}
   if n > 2 and tonumber(code) ~= nil and isstr(message) then
      obj.code_ = code
      obj.message_ = message
   else
      obj.code_ = 0
      obj.message_ = "error"
   end
   obj.set = err_set
   obj.code = err_code
   obj.name = err_name
   obj.message = err_message
   return setmeta(obj, cls)
end

Error.meta_ = {__tostring = err_tostring}
kt.Error = Error

-- -- Visitor (define_vis) ------------------------------------------------------------------

-- ktserver's NOP and REMOVE are light userdata; these are userdata values of their own
local NOP, REMOVE = newproxy(false), newproxy(false)

local function vis_visit_full(...)
   if select("#", ...) ~= 3 or type((...)) ~= "table" then invarg("vis_visit_full") end
   return nil
end

local function vis_visit_empty(...)
   if select("#", ...) ~= 2 or type((...)) ~= "table" then invarg("vis_visit_empty") end
   return nil
end

local Visitor = {NOP = NOP, REMOVE = REMOVE, meta_ = {}}

function Visitor.new(...)
   local cls = ...
   if select("#", ...) ~= 1 or type(cls) ~= "table" then invarg("vis_new") end
   return setmeta({visit_full = vis_visit_full, visit_empty = vis_visit_empty}, cls)
end

kt.Visitor = Visitor

-- a visitor's results as Python takes them: nil = NOP, false = REMOVE, or the new value and
-- the new expiration (nil: keep the record's); NOP and REMOVE are looked for in ``marker``
local function answer(ok, value, xt, marker)
   if not ok then return nil end
   if type(marker) == "userdata" then
      if marker == REMOVE then return false end
      return nil
   end
   local v = tolstr(value)
   if v == nil then return nil end
   return v, tonumber(xt)
end

-- SoftVisitor::visit_full, called by Python for a live record
local function visit_full(visitor, key, value, xt)
   local ok, r1, r2
   if type(visitor) == "table" then
      local f = visitor.visit_full
      if type(f) ~= "function" then return nil end
      ok, r1, r2 = pcall(f, visitor, key, value, xt)
   else
      ok, r1, r2 = pcall(visitor, key, value, xt)
   end
   return answer(ok, r1, r2, r1)
end

-- SoftVisitor::visit_empty: as ktserver, it looks for NOP/REMOVE in the *second* result
local function visit_empty(visitor, key)
   local ok, r1, r2
   if type(visitor) == "table" then
      local f = visitor.visit_empty
      if type(f) ~= "function" then return nil end
      ok, r1, r2 = pcall(f, visitor, key)
   else
      ok, r1, r2 = pcall(visitor, key, nil)
   end
   return answer(ok, r1, r2, r2)
end

-- SoftVisitor::visit_before / visit_after (table visitors of accept_bulk and iterate)
local function visit_hook(visitor, name)
   if type(visitor) ~= "table" then return end
   local f = visitor[name]
   if type(f) == "function" then pcall(f, visitor) end
end

-- -- FileProcessor (define_fproc) ----------------------------------------------------------

local function fproc_process(...)
   if select("#", ...) ~= 4 or type((...)) ~= "table" then invarg("fproc_process") end
   return true
end

local FileProcessor = {meta_ = {}}

function FileProcessor.new(...)
   local cls = ...
   if select("#", ...) ~= 1 or type(cls) ~= "table" then invarg("fproc_new") end
   return setmeta({process = fproc_process}, cls)
end

kt.FileProcessor = FileProcessor

-- SoftFileProcessor::process, called by Python
local function file_process(proc, path, count, size)
   local ok, rv
   if type(proc) == "table" then
      ok, rv = pcall(proc.process, proc, path, count, size)
   else
      ok, rv = pcall(proc, path, count, size)
   end
   return ok and not not rv
end

-- -- Cursor (define_cur) -------------------------------------------------------------------

local function curptr(self, func)
   local ptr = self.cur_ptr_
   if type(ptr) ~= "userdata" then invarg(func) end
   return ptr
end

local function cur_disable(...)
   local self = ...
   if select("#", ...) ~= 1 or type(self) ~= "table" then invarg("cur_disable") end
   P.cur_disable(curptr(self, "cur_disable"))
   self.cur_ptr_ = nil
   return nil
end

local function cur_accept(...)
   local n = select("#", ...)
   local self, visitor, writable, step = ...
   if n < 2 or type(self) ~= "table" then invarg("cur_accept") end
   if n > 4 then invarg("cur_accept") end
   local ptr = curptr(self, "cur_accept")
   if n > 2 then writable = not not writable else writable = true end
   step = n > 3 and not not step
   local t = type(visitor)
   if t ~= "table" and t ~= "function" then invarg("cur_accept") end
   return P.cur_accept(ptr, visitor, writable, step)
end

local function cur_set_value(...)
   local n = select("#", ...)
   local self, value, xt, step = ...
   if n < 2 or type(self) ~= "table" then invarg("cur_set_value") end
   if n > 4 then invarg("cur_set_value") end
   local ptr = self.cur_ptr_
   value = tolstr(value)
   if type(ptr) ~= "userdata" or value == nil or value == "" then invarg("cur_set_value") end
   return P.cur_set_value(ptr, value, xtarg(n, 3, xt), n > 3 and not not step)
end

-- cur:<op>() (remove, seize, step, step_back)
local function cur_plain(op)
   local func, prim = "cur_" .. op, P["cur_" .. op]
   return function(...)
      local self = ...
      if select("#", ...) ~= 1 or type(self) ~= "table" then invarg(func) end
      return prim(curptr(self, func))
   end
end

-- cur:<op>([step]) (get_key, get_value, get)
local function cur_reader(op)
   local func, prim = "cur_" .. op, P["cur_" .. op]
   return function(...)
      local n = select("#", ...)
      local self, step = ...
      if n < 1 or type(self) ~= "table" then invarg(func) end
      if n > 2 then invarg(func) end
      return prim(curptr(self, func), n > 1 and not not step)
   end
end

-- cur:<op>([key]) (jump, jump_back)
local function cur_jumper(op)
   local func, prim = "cur_" .. op, P["cur_" .. op]
   return function(...)
      local n = select("#", ...)
      local self, key = ...
      if n < 1 or type(self) ~= "table" then invarg(func) end
      if n > 2 then invarg(func) end
      local ptr = curptr(self, func)
      if n > 1 then
         key = tolstr(key)
         if key == nil then invarg(func) end
         return prim(ptr, key)
      end
      return prim(ptr, nil)
   end
end

local cur_remove, cur_seize = cur_plain("remove"), cur_plain("seize")
local cur_step, cur_step_back = cur_plain("step"), cur_plain("step_back")
local cur_get_key, cur_get_value, cur_get = cur_reader("get_key"), cur_reader("get_value"), cur_reader("get")
local cur_jump, cur_jump_back = cur_jumper("jump"), cur_jumper("jump_back")

local function cur_db(...)
   local self = ...
   if select("#", ...) ~= 1 or type(self) ~= "table" then invarg("cur_db") end
   curptr(self, "cur_db")
   return self.db_
end

local function cur_error(...)
   local self = ...
   if select("#", ...) ~= 1 or type(self) ~= "table" then invarg("cur_error") end
   curptr(self, "cur_error")
   local db = self.db_
   return db.error(db)
end

local function cur_tostring(...)
   local self = ...
   if select("#", ...) ~= 1 or type(self) ~= "table" then invarg("cur_tostring") end
   local ptr = self.cur_ptr_
   if type(ptr) ~= "userdata" then return "(disabled)" end
   return P.cur_describe(ptr)
end

-- `for key, value in db:pairs()`: each call reads the current record and steps
local function cur_call(...)
   local self = ...
   if select("#", ...) < 1 or type(self) ~= "table" then invarg("cur_call") end
   local key, value = P.cur_get(curptr(self, "cur_call"), true)
   if key == nil then return nil end
   return key, value
end

local Cursor = {meta_ = {__tostring = cur_tostring, __call = cur_call}}

function Cursor.new(...)
   local cls, db = ...
   if select("#", ...) ~= 2 or type(cls) ~= "table" or type(db) ~= "table" then invarg("cur_new") end
   local dbptr = db.db_ptr_
   if type(dbptr) ~= "userdata" then invarg("cur_new") end
   local obj = {}
   obj.cur_ptr_ = P.cursor(dbptr)
   obj.db_ = db
   obj.disable = cur_disable
   obj.accept = cur_accept
   obj.set_value = cur_set_value
   obj.remove = cur_remove
   obj.get_key = cur_get_key
   obj.get_value = cur_get_value
   obj.get = cur_get
   obj.seize = cur_seize
   obj.jump = cur_jump
   obj.jump_back = cur_jump_back
   obj.step = cur_step
   obj.step_back = cur_step_back
   obj.db = cur_db
   obj.error = cur_error
   return setmeta(obj, cls)
end

kt.Cursor = Cursor

-- -- DB (define_db) ------------------------------------------------------------------------

-- the handles made by ktserver (the server's databases) and by DB.new_ptr
local handles = setmetatable({}, {__mode = "k"})

local function dbptr(self, func)
   local ptr = self.db_ptr_
   if type(ptr) ~= "userdata" then invarg(func) end
   return ptr
end

-- the common prologue of most methods: argc within [min, max], a table receiver
local function dbargs(func, n, min, max, self)
   if n < min or type(self) ~= "table" then invarg(func) end
   if max and n > max then invarg(func) end
   return dbptr(self, func)
end

local db = {}

function db.error(...)
   local self = ...
   local ptr = dbargs("db_error", select("#", ...), 1, 1, self)
   local err = self.err_
   return err.new(err, P.error(ptr))
end

function db.open(...)
   local n = select("#", ...)
   local self, path, mode = ...
   local ptr = dbargs("db_open", n, 1, 3, self)
   if not (n > 1 and isstr(path)) then path = ":" end
   if n > 2 and tonumber(mode) ~= nil then mode = tonum(mode) else mode = 6 end
   return P.open(ptr, tolstr(path), mode)
end

function db.accept(...)
   local n = select("#", ...)
   local self, key, visitor, writable = ...
   local ptr = dbargs("db_accept", n, 3, 4, self)
   key = tolstr(key)
   if key == nil then invarg("db_accept") end
   if n > 3 then writable = not not writable else writable = true end
   local t = type(visitor)
   if t ~= "table" and t ~= "function" then invarg("db_accept") end
   return P.accept(ptr, key, visitor, writable)
end

function db.accept_bulk(...)
   local n = select("#", ...)
   local self, keys, visitor, writable = ...
   local ptr = dbargs("db_accept_bulk", n, 3, 4, self)
   if type(keys) ~= "table" then invarg("db_accept_bulk") end
   local list, count = keylist(keys)
   if n > 3 then writable = not not writable else writable = true end
   local t = type(visitor)
   if t ~= "table" and t ~= "function" then invarg("db_accept_bulk") end
   visit_hook(visitor, "visit_before")
   local rv = P.accept_bulk(ptr, list, count, visitor, writable)
   visit_hook(visitor, "visit_after")
   return rv
end

function db.iterate(...)
   local n = select("#", ...)
   local self, visitor, writable = ...
   local ptr = dbargs("db_iterate", n, 2, 3, self)
   if n > 2 then writable = not not writable else writable = true end
   local t = type(visitor)
   if t ~= "table" and t ~= "function" then invarg("db_iterate") end
   visit_hook(visitor, "visit_before")
   local rv = P.iterate(ptr, visitor, writable)
   visit_hook(visitor, "visit_after")
   return rv
end

local function writer(func, op)
   return function(...)
      local n = select("#", ...)
      local self, key, value, xt = ...
      local ptr = dbargs(func, n, 3, 4, self)
      key, value = tolstr(key), tolstr(value)
      if key == nil or value == nil then invarg(func) end
      return P[op](ptr, key, value, xtarg(n, 4, xt))
   end
end

db.set = writer("db_set", "set")
db.add = writer("db_add", "add")
db.replace = writer("db_replace", "replace")
db.append = writer("db_append", "append")

-- db:<op>(key, [num], [orig], [xt]) (increment, increment_double)
local function incrementer(op)
   local func, prim = "db_" .. op, P[op]
   return function(...)
      local n = select("#", ...)
      local self, key, num, orig, xt = ...
      local ptr = dbargs(func, n, 2, 5, self)
      key = tolstr(key)
      if key == nil then invarg(func) end
      return prim(ptr, key, n > 2 and tonum(num) or 0, n > 3 and tonum(orig) or 0, xtarg(n, 5, xt))
   end
end

db.increment = incrementer("increment")
db.increment_double = incrementer("increment_double")

function db.cas(...)
   local n = select("#", ...)
   local self, key, oval, nval, xt = ...
   local ptr = dbargs("db_cas", n, 4, 5, self)
   key = tolstr(key)
   if key == nil then invarg("db_cas") end
   return P.cas(ptr, key, tolstr(oval), tolstr(nval), xtarg(n, 5, xt))
end

local function reader(func, op)
   return function(...)
      local self, key = ...
      local ptr = dbargs(func, select("#", ...), 2, 2, self)
      key = tolstr(key)
      if key == nil then invarg(func) end
      return P[op](ptr, key)
   end
end

db.remove = reader("db_remove", "remove")
db.get = reader("db_get", "get")
db.check = reader("db_check", "check")
db.seize = reader("db_seize", "seize")

function db.set_bulk(...)
   local n = select("#", ...)
   local self, recs, xt, atomic = ...
   local ptr = dbargs("db_set_bulk", n, 2, 4, self)
   if type(recs) ~= "table" then invarg("db_set_bulk") end
   local flat, count = flatmap(recs)
   if n > 3 then atomic = not not atomic else atomic = true end
   return P.set_bulk(ptr, flat, count, xtarg(n, 3, xt), atomic)
end

-- db:<op>(keys, [atomic]) (remove_bulk, get_bulk), the answer through ``wrap``
local function bulk_keys(op, wrap)
   local func, prim = "db_" .. op, P[op]
   return function(...)
      local n = select("#", ...)
      local self, keys, atomic = ...
      local ptr = dbargs(func, n, 2, 3, self)
      if type(keys) ~= "table" then invarg(func) end
      local list, count = keylist(keys)
      if n > 2 then atomic = not not atomic else atomic = true end
      return wrap(prim(ptr, list, count, atomic))
   end
end

local function same(v) return v end

db.remove_bulk = bulk_keys("remove_bulk", same)
db.get_bulk = bulk_keys("get_bulk", maptable)

-- db:<op>([flag], [proc]) (synchronize(hard), occupy(writable))
local function with_processor(op)
   local func, prim = "db_" .. op, P[op]
   return function(...)
      local n = select("#", ...)
      local self, flag, proc = ...
      local ptr = dbargs(func, n, 1, 3, self)
      local t = type(proc)
      if not (n > 2 and (t == "table" or t == "function")) then proc = nil end
      return prim(ptr, n > 1 and not not flag, proc)
   end
end

db.synchronize = with_processor("synchronize")
db.occupy = with_processor("occupy")

-- what the embedded server's storage cannot do fails loudly rather than quietly (after
-- ktserver's argument checks)
local function unsupported_method(op, min, max, what)
   local func = "db_" .. op
   return function(...)
      dbargs(func, select("#", ...), min, max, (...))
      error(func .. ": " .. what .. " not supported by the embedded server", 0)
   end
end

db.copy = unsupported_method("copy", 2, 2, "copying a database file is")
db.begin_transaction = unsupported_method("begin_transaction", 1, 2, "transactions are")
db.end_transaction = unsupported_method("end_transaction", 1, 2, "transactions are")
db.transaction = unsupported_method("transaction", 2, 3, "transactions are")
db.dump_snapshot = unsupported_method("dump_snapshot", 2, 2, "Kyoto Cabinet snapshots are")
db.load_snapshot = unsupported_method("load_snapshot", 2, 2, "Kyoto Cabinet snapshots are")
db.mapreduce = unsupported_method("mapreduce", 3, 10, "MapReduce is")

-- db:<op>() (clear, count, size, path, status), the answer through ``wrap``
local function db_plain(op, wrap)
   local func, prim = "db_" .. op, P[op]
   return function(...)
      return wrap(prim(dbargs(func, select("#", ...), 1, 1, (...))))
   end
end

db.close = db_plain("close", same)
db.clear = db_plain("clear", same)
db.count = db_plain("count", same)
db.size = db_plain("size", same)
db.path = db_plain("path", same)
db.status = db_plain("status", maptable)

-- db:<op>(pattern, [max]) (match_prefix, match_regex)
local function matcher(op)
   local func, prim = "db_" .. op, P[op]
   return function(...)
      local n = select("#", ...)
      local self, pattern, max = ...
      local ptr = dbargs(func, n, 2, nil, self)
      pattern = tolstr(pattern)
      if pattern == nil then invarg(func) end
      return prim(ptr, pattern, n > 2 and tonum(max) or -1)
   end
end

db.match_prefix = matcher("match_prefix")
db.match_regex = matcher("match_regex")

function db.match_similar(...)
   local n = select("#", ...)
   local self, origin, range, utf, max = ...
   local ptr = dbargs("db_match_similar", n, 2, nil, self)
   origin = tolstr(origin)
   if origin == nil then invarg("db_match_similar") end
   return P.match_similar(ptr, origin, n > 2 and tonum(range) or -1, n > 3 and not not utf,
                          n > 4 and tonum(max) or -1)
end

function db.merge(...)
   local n = select("#", ...)
   local self, srcs, mode = ...
   if n < 2 or type(self) ~= "table" or type(srcs) ~= "table" then invarg("db_merge") end
   if n > 3 then invarg("db_merge") end
   local ptr = dbptr(self, "db_merge")
   if n > 2 and tonumber(mode) ~= nil then mode = tonum(mode) else mode = 0 end
   local list, count = {}, 0
   for i = 1, #srcs do
      local src = rawget(srcs, i)
      if type(src) == "table" then
         count = count + 1
         list[count] = src.db_ptr_
      end
   end
   return P.merge(ptr, list, count, mode)
end

function db.cursor(...)
   local self = ...
   dbargs("db_cursor", select("#", ...), 1, 1, self)
   local cur = self.cur_
   return cur.new(cur, self)
end

function db.cursor_process(...)
   local self, proc = ...
   dbargs("db_cursor_process", select("#", ...), 2, 2, self)
   if type(proc) ~= "function" then invarg("db_cursor_process") end
   local cur = self.cur_
   local obj = cur.new(cur, self)
   local ok, err = pcall(proc, obj)
   obj.disable(obj)
   if not ok then error(err, 0) end
end

function db.pairs(...)
   local self = ...
   dbargs("db_pairs", select("#", ...), 1, 1, self)
   local cur = self.cur_
   local obj = cur.new(cur, self)
   obj.jump(obj)
   return obj, self, nil
end

local function db_tostring(...)
   local self = ...
   return P.describe(dbargs("db_tostring", select("#", ...), 1, 1, self))
end

-- `db[key]` reads a record
local function db_index(...)
   local self, key = ...
   if select("#", ...) ~= 2 or type(self) ~= "table" then invarg("db_index") end
   local ptr = rawget(self, "db_ptr_")
   key = tolstr(key)
   if type(ptr) ~= "userdata" or key == nil then invarg("db_index") end
   return (P.get(ptr, key))
end

-- `db[key] = value` stores a record, `db[key] = nil` removes it
local function db_newindex(...)
   local self, key, value = ...
   if select("#", ...) ~= 3 or type(self) ~= "table" then invarg("db_newindex") end
   local ptr = rawget(self, "db_ptr_")
   key = tolstr(key)
   if type(ptr) ~= "userdata" or key == nil then invarg("db_newindex") end
   value = tolstr(value)
   if value ~= nil then return P.set(ptr, key, value, nil) end
   return P.remove(ptr, key)
end

local DB = {
   OREADER = 1, OWRITER = 2, OCREATE = 4, OTRUNCATE = 8, OAUTOTRAN = 16, OAUTOSYNC = 32,
   ONOLOCK = 64, OTRYLOCK = 128, ONOREPAIR = 256,
   MSET = 0, MADD = 1, MREPLACE = 2, MAPPEND = 3,
   XNOLOCK = 1, XNOCOMP = 256,
}

local METHODS = {
   "error", "open", "close", "accept", "accept_bulk", "iterate", "set", "add", "replace", "append",
   "increment", "increment_double", "cas", "remove", "get", "check", "seize", "set_bulk",
   "remove_bulk", "get_bulk", "clear", "synchronize", "occupy", "copy", "begin_transaction",
   "end_transaction", "transaction", "dump_snapshot", "load_snapshot", "count", "size", "path",
   "status", "match_prefix", "match_regex", "match_similar", "merge", "mapreduce", "cursor",
   "cursor_process", "pairs",
}

function DB.new(...)
   local n = select("#", ...)
   local cls, ptr = ...
   if n < 1 or type(cls) ~= "table" then invarg("db_new") end
   if n > 2 then invarg("db_new") end
   local obj = {}
   if n > 1 and handles[ptr] then
      obj.db_ptr_ = ptr
   else
      obj.db_ptr_ = P.new_db()
   end
   local module = G.__kyototycoon__
   obj.err_ = module.Error
   obj.cur_ = module.Cursor
   for i = 1, #METHODS do
      obj[METHODS[i]] = db[METHODS[i]]
   end
   return setmeta(obj, cls)
end

function DB.new_ptr(...)
   if select("#", ...) ~= 1 or type((...)) ~= "table" then invarg("db_new_ptr") end
   local ptr = P.new_db()
   handles[ptr] = true
   return ptr
end

function DB.delete_ptr(...)
   local _, ptr = ...
   if select("#", ...) ~= 2 or type((...)) ~= "table" then invarg("db_delete_ptr") end
   if handles[ptr] then
      P.close(ptr)
      handles[ptr] = nil
   end
   return nil
end

function DB.process(...)
   local n = select("#", ...)
   local cls, proc, path, mode = ...
   if n < 2 or type(cls) ~= "table" then invarg("db_process") end
   if n > 4 then invarg("db_process") end
   if type(proc) ~= "function" then invarg("db_process") end
   local obj = cls.new(cls)
   local opened
   if n > 3 then
      opened = obj.open(obj, path, mode)
   elseif n > 2 then
      opened = obj.open(obj, path)
   else
      opened = obj.open(obj)
   end
   if not opened then return obj.error(obj) end
   local ok, err = pcall(proc, obj)
   local closed = obj.close(obj)
   if not ok then error(err, 0) end
   if not closed then return obj.error(obj) end
   return nil
end

DB.meta_ = {__tostring = db_tostring, __index = db_index, __newindex = db_newindex}
kt.DB = DB

-- -- the server's objects ------------------------------------------------------------------

__kyototycoon__ = kt
kt.__serv__ = newproxy(false)
kt.VERSION = info.version
kt.RVSUCCESS = 0
kt.RVENOIMPL = 1
kt.RVEINVALID = 2
kt.RVELOGIC = 3
kt.RVEINTERNAL = 5
kt.thid = info.thid
do
   local dbs = {}
   for i = 1, #info.dbs do
      local ptr = info.dbs[i]
      handles[ptr] = true
      dbs[i] = DB.new(DB, ptr)
   end
   kt.db = dbs[1]
   for i = 1, #info.names, 2 do
      dbs[info.names[i]] = dbs[info.names[i + 1]]
   end
   kt.dbs = dbs
end

function kt.log(...)
   local kind, message = ...
   if select("#", ...) ~= 2 or not isstr(kind) then invarg("serv_log") end
   kind, message = tolstr(kind), tolstr(message)
   if message ~= nil then P.log(kind, message) end
end

-- lupa's bridge to Python is not part of ktserver's Lua
python = nil
package.loaded.python = nil

-- -- what Python calls ---------------------------------------------------------------------

local RVENOIMPL = kt.RVENOIMPL

-- load the script as luaL_loadstring + lua_pcall do: true, or false and the message
local function load(script, deadline)
   coarse = deadline
   local chunk, err = loadstring(script)
   if chunk == nil then return false, err end
   local ok, msg = pcall(chunk)
   if not ok then return false, tolstr(msg) end
   return true
end

-- ScriptProcessor::call: the return value (number) and the outputs as a flat array, or
-- nil and the error message of a procedure that raised
local function call(name, inmap, deadline)
   coarse = deadline
   sethook(hook, "", COUNT)
   local outmap = {}
   local fn = G[name]
   if type(fn) ~= "function" then return RVENOIMPL, {} end
   local ok, rv = pcall(fn, inmap, outmap)
   if not ok then return nil, tolstr(rv) end
   local flat, count = {}, 0
   local k, v = next(outmap)
   while k ~= nil do
      local ks, vs = valstr(k), valstr(v)
      if ks ~= nil and vs ~= nil then
         flat[count + 1] = ks
         flat[count + 2] = vs
         count = count + 2
      end
      k, v = next(outmap, k)
   end
   return tonumber(rv) or 0, flat
end

-- after each load or call (Python has already stopped the clock)
local function finish()
   coarse = nil
   sethook(hook, "", COUNT)
end

return {
   load = load,
   call = call,
   finish = finish,
   new_table = function() return {} end,
   visit_full = visit_full,
   visit_empty = visit_empty,
   file_process = file_process,
}
