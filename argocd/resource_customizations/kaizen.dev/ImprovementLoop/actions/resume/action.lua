-- Resume a paused or Degraded loop, as `kaizen resume` does: the pause annotation goes, and failures before now no
-- longer count toward Degraded.
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["kaizen.dev/paused"] = nil
obj.metadata.annotations["kaizen.dev/failures-acknowledged-at"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
