-- Argo CD health of a Kaizen RetrainJob (kaizen.dev/v1alpha1): one targeted retraining, gated against its baseline.
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
local progressing = condition("Progressing")
if progressing ~= nil and progressing.status == "False"
    and (progressing.reason == "NameConflict" or progressing.reason == "ChildForbidden") then
  hs.status = "Degraded"
  hs.message = progressing.message
  return hs
end
local message = status.message or ""
if status.phase == "Succeeded" and status.verdict == "Passed" then
  hs.status = "Healthy"
elseif status.phase == "Succeeded" or status.phase == "Failed" then
  -- A candidate that failed its gates is never rolled out: the retrain did not give a model to release.
  hs.status = "Degraded"
else
  hs.status = "Progressing"
  if message == "" then
    message = "Waiting for the training Job to start"
  end
end
hs.message = message
return hs
