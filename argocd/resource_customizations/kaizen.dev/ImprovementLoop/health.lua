-- Argo CD health of a Kaizen ImprovementLoop (kaizen.dev/v1alpha1): the continuous-improvement loop of one model.
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
-- The newest decision says why the loop is in its phase.
local message = ""
if status.decisions ~= nil and status.decisions[1] ~= nil then
  message = status.decisions[1].reason or ""
end
local phase = status.phase
if phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the first observation of the signals"
  return hs
end
if phase == "Degraded" then
  hs.status = "Degraded"
elseif phase == "Paused" or phase == "AwaitingApproval" then
  hs.status = "Suspended"
elseif phase == "Retraining" or phase == "RollingOut" then
  hs.status = "Progressing"
else
  -- Observing or CoolingDown. Missing data is never taken as healthy: a signal without data is Unknown.
  hs.status = "Healthy"
  local unknown = ""
  for _, s in ipairs(status.signals or {}) do
    if s.state == "Unknown" then
      if unknown ~= "" then
        unknown = unknown .. ", "
      end
      unknown = unknown .. s.name
    end
  end
  if unknown ~= "" then
    hs.status = "Unknown"
    if message == "" then
      message = "No data for signal(s) " .. unknown
    end
  end
end
if status.model ~= nil and status.model.version ~= nil then
  message = "Serving " .. status.model.version .. ". " .. message
end
hs.message = message
return hs
