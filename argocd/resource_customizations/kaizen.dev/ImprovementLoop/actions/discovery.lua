-- Actions on a Kaizen ImprovementLoop, enabled when the operator would act on them.
local actions = {}
local status = obj.status or {}
local annotations = obj.metadata.annotations or {}
local paused = annotations["kaizen.dev/paused"] == "true"
local busy = status.phase == "Retraining" or status.phase == "RollingOut"
actions["approve"] = {["disabled"] = status.phase ~= "AwaitingApproval"}
actions["retrain"] = {["disabled"] = paused or busy or status.phase == "Paused"}
actions["pause"] = {["disabled"] = paused}
actions["resume"] = {["disabled"] = not paused and status.phase ~= "Degraded"}
return actions
