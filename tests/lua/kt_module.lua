-- kt_module.lua: procedures exercising the kt module (tests/test_lua.py).  The expected
-- answers in the tests were recorded from a real ktserver built with Lua 5.1.
kt = __kyototycoon__
db = kt.db

local function dump(outmap, prefix, t)
   if type(t) ~= "table" then outmap[prefix] = tostring(t) return end
   local keys = {}
   for k, v in pairs(t) do keys[#keys+1] = k end
   outmap[prefix .. ".n"] = #keys
   local i = 0
   for k, v in pairs(t) do
      i = i + 1
      outmap[prefix .. "." .. i] = tostring(k) .. "=" .. tostring(v)
   end
end

function mod(inmap, outmap)
   outmap.atoi = kt.atoi(" 12abc")
   outmap.atoix = kt.atoix("3k")
   outmap.atof = kt.atof("1.5e3x")
   outmap.hm = kt.hash_murmur("hello")
   outmap.hf = kt.hash_fnv("hello")
   outmap.lev = kt.levdist("kitten", "sitting")
   outmap.levu = kt.levdist("あいう", "あう", true)
   outmap.pack1 = kt.codec("hex", kt.pack("CcSsIiLlNnMwfd", 1, -1, 65535, -2, 7, -7, 2^40, -3, 258, 3, 5, 300, 1.5, 2.25))
   outmap.pack2 = kt.codec("hex", kt.pack("C*", {1, 2, 3}, 4, "5", "x", true))
   outmap.pack3 = kt.codec("hex", kt.pack("w", 2^60))
   outmap.pack4 = kt.codec("hex", kt.pack("C2N", 300, -1, 7, 9))
   dump(outmap, "unpack", kt.unpack("CcnNw*", "\255\255\1\2\0\0\1\0\130\1\5"))
   dump(outmap, "split1", kt.split("a,b;;c", ",;"))
   dump(outmap, "split2", kt.split("a\0b\0"))
   outmap.url = kt.codec("url", "a b/ü")
   outmap.unurl = kt.codec("~url", "a%20b+c")
   outmap.base = kt.codec("base", "hello world")
   outmap.unbase = kt.codec("~base", "aGVsbG8=")
   outmap.quote = kt.codec("quote", "a=b\tü")
   outmap.hex = kt.codec("HEX", "\1\171")
   outmap.unhex = kt.codec("~hex", "41 4g2")
   outmap.zlib = kt.codec("hex", kt.codec("zlib", "aaaaaaaaaa"))
   outmap.deflate = kt.codec("hex", kt.codec("deflate", "aaaaaaaaaa"))
   outmap.gzip = kt.codec("hex", kt.codec("gzip", "aaaaaaaaaa"))
   outmap.unzlib = kt.codec("~zlib", kt.codec("zlib", "xyz"))
   outmap.ungzip = kt.codec("~gzip", kt.codec("gzip", "xyz"))
   outmap.bad = tostring(kt.codec("~deflate", "garbage"))
   outmap.unknown = tostring(kt.codec("foo", "x"))
   outmap.bitand = kt.bit("and", 12, 10)
   outmap.bitnot = kt.bit("not", 0)
   outmap.bitleft = kt.bit("left", 1, 33)
   outmap.bitright = kt.bit("right", -1, 4)
   outmap.strstr1 = kt.strstr("hello", "ll")
   outmap.strstr2 = kt.strstr("hello", "zz")
   outmap.strstr3 = kt.strstr("a-b-c", "-", "+-")
   outmap.fwm = kt.strfwm("hello", "he")
   outmap.bwm = kt.strbwm("hello", "he")
   outmap.re1 = kt.regex("hello", "l+")
   outmap.re2 = kt.regex("hello world", "(o)", "[$1$&$$]")
   outmap.re3 = kt.regex("abc", "x*", "-")
   outmap.re4 = kt.regex("abc", "^a", "A")
   outmap.re5 = tostring(kt.regex("abc", "(", "x"))
   outmap.ad = kt.codec("hex", kt.arraydump({"a", 1, 2.5, {}, "bb"}))
   dump(outmap, "al", kt.arrayload(kt.arraydump({"x", "yy", ""})))
   outmap.md = kt.codec("hex", kt.mapdump({a = "1", b = 2}))
   dump(outmap, "ml", kt.mapload(kt.mapdump({k1 = "v1", k2 = "v2", k3 = "v3"})))
   outmap.time = type(kt.time())
   outmap.thid = type(kt.thid)
   outmap.nop = type(kt.Visitor.NOP)
   local e = kt.Error:new(7, "no rec")
   outmap.err = tostring(e) .. "|" .. e:name() .. "|" .. e:code() .. "|" .. e:message()
   local e2 = kt.Error:new()
   outmap.err2 = tostring(e2)
   local ok, msg = pcall(kt.atoi)
   outmap.invarg = msg
   ok, msg = pcall(db.set, db, "k")
   outmap.invarg2 = msg
   outmap.dbstr = tostring(db)
   outmap.nan = 0/0
   outmap.inf = 1/0
   outmap.big = 2^70
   outmap.neg = -1.25
   return kt.RVSUCCESS
end

function dbops(inmap, outmap)
   db:clear()
   outmap.set = db:set("a", "1")
   outmap.add = db:add("a", "2")
   outmap.adderr = tostring(db:error())
   outmap.addcode = db:error():code()
   outmap.replace = db:replace("zz", "2")
   outmap.replaceerr = tostring(db:error())
   outmap.append = db:append("a", "x")
   outmap.get = db:get("a")
   outmap.getmiss = tostring(db:get("nope"))
   outmap.geterr = tostring(db:error())
   outmap.inc = db:increment("n", 5)
   outmap.inc2 = db:increment("n", -2)
   outmap.incbad = tostring(db:increment("a", 1))
   outmap.incerr = tostring(db:error())
   outmap.incd = db:increment_double("d", 1.5)
   outmap.incd2 = db:increment_double("d", 0.25)
   outmap.cas = db:cas("a", "1x", "3")
   outmap.casbad = db:cas("a", "1x", "4")
   outmap.caserr = tostring(db:error())
   outmap.check = db:check("a")
   outmap.checkmiss = db:check("zzz")
   outmap.seize = db:seize("a")
   outmap.seizemiss = tostring(db:seize("a"))
   outmap.setbulk = db:set_bulk({x = "1", y = "2", [3] = "three", z = 4.5})
   outmap.getbulk = kt.mapdump(db:get_bulk({"x", "y", "nope", 3}))
   outmap.removebulk = db:remove_bulk({"x", "nope"})
   outmap.count = db:count()
   outmap.size = type(db:size())
   outmap.path = db:path()
   outmap.remove = db:remove("y")
   outmap.removemiss = db:remove("y")
   outmap.idx = db["z"]
   db["w"] = "ww"
   outmap.idx2 = db.w
   db["w"] = nil
   outmap.idx3 = tostring(db.w)
   db:set("p1", "a"); db:set("p2", "b"); db:set("q1", "c")
   outmap.mp = table.concat(db:match_prefix("p"), ",")
   outmap.mp1 = table.concat(db:match_prefix("p", 1), ",")
   outmap.mr = table.concat(db:match_regex("^[pq]1$"), ",")
   outmap.mrbad = tostring(db:match_regex("("))
   local ms = db:match_similar("p1", 1)
   outmap.ms = #ms
   local st = db:status()
   outmap.status = st.count .. ":" .. tostring(st.path)
   local xtv, xt = db:get("p1")
   outmap.xt = xt
   db:set("e", "v", 100)
   local _, xt2 = db:get("e")
   outmap.xtrel = xt2 - kt.time() > 90
   return kt.RVSUCCESS
end

function visitors(inmap, outmap)
   db:clear()
   db:set("a", "1"); db:set("b", "2"); db:set("c", "3")
   outmap.acc = db:accept("a", function(k, v, xt) return v .. "!" end)
   outmap.a = db:get("a")
   outmap.accrm = db:accept("b", function(k, v, xt) return kt.Visitor.REMOVE end)
   outmap.b = tostring(db:get("b"))
   outmap.accnew = db:accept("n", function(k, v, xt) if v then return kt.Visitor.NOP end return "new", 50 end)
   outmap.n = db:get("n")
   outmap.accro = db:accept("c", function(k, v) return "changed" end, false)
   outmap.c = db:get("c")
   local vis = kt.Visitor:new()
   local seen = {}
   function vis:visit_full(k, v, xt) seen[#seen+1] = k; return v .. "+" end
   function vis:visit_before() seen[#seen+1] = "before" end
   function vis:visit_after() seen[#seen+1] = "after" end
   outmap.it = db:iterate(vis)
   table.sort(seen)
   outmap.seen = table.concat(seen, ",")
   outmap.c2 = db:get("c")
   local order = {}
   outmap.ab = db:accept_bulk({"c", "zz"}, function(k, v) order[#order+1] = k .. "=" .. tostring(v); return kt.Visitor.NOP end)
   outmap.order = table.concat(order, ",")
   local cur = db:cursor()
   outmap.jump = cur:jump()
   local keys = {}
   for k, v in db:pairs() do keys[#keys+1] = k .. "=" .. v end
   table.sort(keys)
   outmap.pairs = table.concat(keys, ",")
   outmap.cget = cur:get_key()
   outmap.cstep = cur:step()
   cur:jump("c")
   outmap.cget2 = cur:get_value()
   outmap.csv = cur:set_value("C")
   outmap.c3 = db:get("c")
   cur:jump("c")
   local k, v, xt = cur:get()
   outmap.cxt = xt
   outmap.cacc = cur:accept(function(k, v) return "CC" end)
   outmap.c4 = db:get("c")
   cur:jump("c")
   outmap.cseize = cur:seize()
   outmap.c5 = tostring(db:get("c"))
   outmap.cstr = tostring(cur)
   cur:disable()
   outmap.cdis = tostring(cur)
   local ok, err = pcall(cur.step, cur)
   outmap.cdiserr = err
   local cur2 = db:cursor()
   outmap.unpos = tostring(cur2:get())
   outmap.unposerr = tostring(cur2:error())
   outmap.jb = cur2:jump_back()
   outmap.jberr = tostring(db:error())
   return kt.RVSUCCESS
end

function memdb(inmap, outmap)
   local mdb = kt.DB:new()
   outmap.open = mdb:open("+")
   mdb:set("b", "2"); mdb:set("a", "1")
   outmap.count = mdb:count()
   local cur = mdb:cursor()
   cur:jump()
   outmap.first = cur:get_key()
   outmap.str = tostring(mdb)
   outmap.close = mdb:close()
   outmap.closed = tostring(mdb:get("a"))
   outmap.closederr = tostring(mdb:error())
   outmap.reopen = mdb:open(":")
   local src = kt.DB:new(); src:open("+"); src:set("m1", "x"); src:set("a", "src")
   outmap.merge = mdb:merge({src}, kt.DB.MADD)
   outmap.mcount = mdb:count()
   local st = mdb:status()
   outmap.type = st.type
   local r = kt.DB:process(function(d) d:set("q", "1"); outmap.pcount = d:count() end, "%")
   outmap.process = tostring(r)
   outmap.sync = db:synchronize(false, function(path, count, size) outmap.spath = path; outmap.scount = count; return true end)
   outmap.occ = db:occupy(false, function(path, count, size) return false end)
   outmap.occerr = tostring(db:error())
   return kt.RVSUCCESS
end

function errs(inmap, outmap)
   local calls = {"kt.split()", "kt.pack()", "db:get()", "db:accept('k', 1)", "kt.Cursor:new(1, 2)",
                  "kt.log('x')", "kt.mapdump(1)", "db.foo(1)"}
   for i, call in ipairs(calls) do
      local ok, err = pcall(loadstring(call))
      outmap[call] = err
   end
   return kt.RVSUCCESS
end

-- the return value: the first result, as lua_tointeger reads it
function rets(inmap, outmap)
   local v = inmap.v
   outmap.v = v
   if v == "nil" then return nil end
   if v == "str" then return "3" end
   if v == "float" then return 3.9 end
   if v == "big" then return 2^32 end
   if v == "neg" then return -1 end
   if v == "true" then return true end
   if v == "huge" then return 1e300 end
   return tonumber(v)
end

-- failures
function boom(inmap, outmap) error("boom") end
function boomtable(inmap, outmap) error({}) end
function boomnumber(inmap, outmap) error(42) end
function badarg(inmap, outmap) kt.split() end
function logit(inmap, outmap)
   kt.log("error", "logged\0cut")
   kt.log("INFO", "info")
   return kt.RVSUCCESS
end

-- the environment of a procedure
function globals(inmap, outmap)
   outmap.python = tostring(python)
   outmap.libs = type(io) .. type(os) .. type(debug) .. type(string) .. type(table) .. type(math)
   outmap.same = tostring(__kyototycoon__ == kt)
   outmap.ndbs = #kt.dbs
   outmap.second = tostring(kt.dbs[2])
   outmap.named = tostring(kt.dbs["+"] == kt.dbs[2])
   local keys = {}
   for k in pairs(kt) do keys[#keys + 1] = k end
   table.sort(keys)
   outmap.kt = table.concat(keys, ",")
   local dk = {}
   for k in pairs(kt.db) do dk[#dk + 1] = k end
   table.sort(dk)
   outmap.db = table.concat(dk, ",")
   return kt.RVSUCCESS
end

function coroutines(inmap, outmap)
   local f = coroutine.wrap(function(a) local b = coroutine.yield(a + 1); return b * 2 end)
   outmap.a = f(1)
   outmap.b = f(10)
   return kt.RVSUCCESS
end

-- writes for the update log
function writes(inmap, outmap)
   db:set("w1", "one")
   db:accept("w2", function(k, v) return "two", 100 end)
   db:remove("w1")
   kt.dbs[2]:set("w3", "three")
   return kt.RVSUCCESS
end

-- time
function thread(inmap, outmap)
   outmap.thid = kt.thid
   return kt.RVSUCCESS
end

function nap(inmap, outmap)
   kt.sleep(tonumber(inmap.seconds))
   outmap.thid = kt.thid
   return kt.RVSUCCESS
end

function spin(inmap, outmap)
   while true do end
end

function spinpcall(inmap, outmap)
   while true do pcall(function() while true do end end) end
end
