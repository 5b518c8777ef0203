-- Actions on a Kaizen Rollout, enabled when the operator would act on them (kaizen.logic.rollout.apply_action).
local actions = {}
local status = obj.status or {}
local steps = 0
if obj.spec.steps ~= nil then
  steps = #obj.spec.steps
end
local ended = status.phase == "Promoted" or status.phase == "RolledBack" or status.phase == "Aborted"
-- Past the last step the stable Deployment already serves the candidate: promote and abort are ignored then.
local promoting = status.currentStep ~= nil and status.currentStep >= steps
actions["promote"] = {["disabled"] = ended or promoting}
actions["abort"] = {["disabled"] = ended or promoting}
actions["approve"] = {["disabled"] = ended or status.awaitingApproval ~= true}
return actions
