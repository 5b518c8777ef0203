-- Argo CD health of a Kaizen Rollout (kaizen.dev/v1alpha1): one staged canary release of a candidate model.
-- Runs without Lua's string and math libraries, as scripts from argocd-cm do unless useOpenLibs is set.
local hs = {}
local status = obj.status
if status == nil or status.observedGeneration == nil or status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the Kaizen operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end
local function condition(kind)
  for _, c in ipairs(status.conditions or {}) do
    if c.type == kind then
      return c
    end
  end
  return nil
end
local invalid = condition("InvalidSpec")
if invalid ~= nil and invalid.status == "True" then
  hs.status = "Degraded"
  hs.message = invalid.message
  return hs
end
-- A canary Deployment name taken by another owner, or a quota or RBAC refusal: it needs a person.
local progressing = condition("Progressing")
if progressing ~= nil and progressing.status == "False"
    and (progressing.reason == "NameConflict" or progressing.reason == "ChildForbidden") then
  hs.status = "Degraded"
  hs.message = progressing.message
  return hs
end
local message = status.message or ""
if status.phase == "Promoted" then
  hs.status = "Healthy"
  hs.message = message
elseif status.phase == "RolledBack" or status.phase == "Aborted" then
  hs.status = "Degraded"
  hs.message = message
elseif status.phase == "Paused" then
  -- A pause{} step without duration, or a failure-policy limit: `kaizen approve` (or the approve action) resumes.
  hs.status = "Suspended"
  hs.message = message
elseif status.phase == nil and obj.spec.target ~= nil and message == "The target Deployment "
    .. obj.metadata.namespace .. "/" .. obj.spec.target.deployment .. " does not exist; waiting for it." then
  hs.status = "Missing"
  hs.message = message
else
  hs.status = "Progressing"
  if message == "" then
    message = "Waiting for the Kaizen operator to start the rollout"
  end
  hs.message = message
end
return hs
