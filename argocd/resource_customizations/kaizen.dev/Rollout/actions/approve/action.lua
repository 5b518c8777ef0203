-- Approve what the rollout waits for: a pause{} step without duration, or a failure-policy limit.
-- The same annotations as `kaizen approve` (kaizen.api.actions); the operator acts on them, records the request in
-- status.lastAction and removes them. Argo CD does not tell the script who asked: its own audit log does.
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["kaizen.dev/action"] = "approve"
obj.metadata.annotations["kaizen.dev/action-by"] = "argocd"
obj.metadata.annotations["kaizen.dev/action-at"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
