-- NeuroNova auto-routing for Orthanc: when a study is stable, send its CT and MR series to the AI node.
--
-- The node is the DICOM modality named "neuronova" in orthanc.json ("DicomModalities"). The node's
-- results (SEG, SR, secondary captures) come back into the same study; they make the study stable again,
-- so each series is sent only when it is new or has gained instances since it was last sent, and the
-- node's own result modalities are never sent back.

local NODE_MODALITY = "neuronova"
local ROUTED = { CT = true, MR = true }

local sent = {}  -- Orthanc series ID -> number of instances when it was last sent

function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  for _, s in ipairs(series) do
    local modality = s['MainDicomTags']['Modality']
    local count = #s['Instances']
    if modality ~= nil and ROUTED[modality] and sent[s['ID']] ~= count then
      print('NeuroNova: routing a ' .. modality .. ' series of ' .. count .. ' instances to ' .. NODE_MODALITY)
      local ok = pcall(RestApiPost, '/modalities/' .. NODE_MODALITY .. '/store', s['ID'])
      if ok then
        sent[s['ID']] = count
      else
        print('NeuroNova: sending failed; it is retried when the study is next stable')
      end
    end
  end
end
