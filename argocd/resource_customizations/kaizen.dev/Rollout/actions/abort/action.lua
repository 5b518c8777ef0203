-- Abort the rollout: the canary is removed, the stable Deployment is left as it is.
-- The same annotations as `kaizen abort` (kaizen.api.actions); the operator acts on them, records the request in
-- status.lastAction and removes them. Argo CD does not tell the script who asked: its own audit log does.
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["kaizen.dev/action"] = "abort"
obj.metadata.annotations["kaizen.dev/action-by"] = "argocd"
obj.metadata.annotations["kaizen.dev/action-at"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
