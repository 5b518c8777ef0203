-- Pause the loop: it keeps observing and recording, and takes no action. The same annotation as `kaizen pause`.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["kaizen.dev/paused"] = "true"
return obj
