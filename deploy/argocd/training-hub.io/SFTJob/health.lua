-- Argo CD health check for training-hub.io/SFTJob.
-- Reads only status, the kstatus way: a status older than the spec (observedGeneration behind
-- metadata.generation) is never trusted, so a just-edited job shows Progressing, not a stale verdict.
-- Conditions (Succeeded, Failed, Suspended) decide first; phase is the fallback for older operators.
-- Written for Lua 5.1 (Argo CD runs gopher-lua).

local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function describe_failure(status, fallback)
  local f = status.lastFailure
  if f == nil then
    return fallback
  end
  local text = "data preparation"
  if f.rank ~= nil then
    text = "rank " .. tostring(f.rank)
  end
  if f.exitCode ~= nil then
    text = text .. " exited " .. tostring(f.exitCode)
  end
  if f.reason ~= nil and f.reason ~= "" then
    text = text .. " (" .. f.reason .. ")"
  end
  if f.message ~= nil and f.message ~= "" then
    text = text .. ": " .. f.message
  end
  return text
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the job"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local failed = condition(status, "Failed")
local succeeded = condition(status, "Succeeded")
local suspended = condition(status, "Suspended")
local phase = status.phase

if is_true(failed) or (failed == nil and phase == "Failed") then
  hs.status = "Degraded"
  hs.message = (failed and failed.message and failed.message ~= "" and failed.message)
    or describe_failure(status, "The job failed")
  return hs
end

if is_true(succeeded) or (succeeded == nil and phase == "Succeeded") then
  hs.status = "Healthy"
  hs.message = (succeeded and succeeded.message and succeeded.message ~= "" and succeeded.message)
    or "Training finished"
  return hs
end

if is_true(suspended) or (suspended == nil and phase == "Suspended") then
  hs.status = "Suspended"
  hs.message = (suspended and suspended.message and suspended.message ~= "" and suspended.message)
    or "The job is suspended"
  return hs
end

hs.status = "Progressing"
local nodes = status.nodes or ((status.nodesReady or 0) .. "/" .. (status.nodesTotal or "?"))
if phase == "Restarting" then
  hs.message = "Restarting the gang (restart " .. tostring(status.restarts or 0) .. "): "
    .. describe_failure(status, "a pod failed")
elseif phase == "Preparing" then
  local prepared = condition(status, "Prepared")
  hs.message = "Preparing the data before the gang starts"
  if prepared ~= nil and prepared.message ~= nil and prepared.message ~= "" then
    hs.message = hs.message .. ": " .. prepared.message
  end
elseif phase == "Running" then
  hs.message = "Running, nodes ready " .. nodes
  if status.progressText ~= nil and status.progressText ~= "" then
    hs.message = hs.message .. ", " .. status.progressText
  end
else
  hs.message = (phase or "Pending") .. ", nodes ready " .. nodes
end
return hs
