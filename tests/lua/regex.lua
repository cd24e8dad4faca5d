kt = __kyototycoon__

-- kt.regex(text, pattern[, alt]): "true"/"false" without alt, the replaced text with it
function regex(inmap, outmap)
   if inmap.alt then
      outmap.result = kt.regex(inmap.text, inmap.pattern, inmap.alt)
   else
      outmap.result = tostring(kt.regex(inmap.text, inmap.pattern))
   end
   return kt.RVSUCCESS
end
