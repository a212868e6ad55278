"""Tissue labels and their Hounsfield units.

`Tissue` numbers are part of the label files' meaning: existing values never change, new
tissues are appended. v1 and v2 have their own HU tables because v1 draws one jitter per
entry of its table from the seed's stream: a new entry there would change every v1 phantom.
"""
from __future__ import annotations

from enum import IntEnum


class Tissue(IntEnum):
    """Label of each voxel in `chest_phantom(..., return_labels=True)`."""

    AIR = 0  # outside the body (and outside the scan range / reconstruction circle in v2)
    FAT = 1  # subcutaneous, mediastinal, epicardial and visceral fat
    MUSCLE = 2  # muscle and other soft tissue
    LUNG = 3  # lung parenchyma
    VESSEL = 4  # pulmonary vessels inside the lungs (partial volume: mostly below blood HU)
    HEART = 5  # myocardium
    BLOOD = 6  # cardiac chambers, aorta, pulmonary trunk, veins (contrast-enhanced in some v2 cases)
    GAS = 7  # air inside the body: trachea, bronchi, stomach bubble
    LIVER = 8
    STOMACH = 9  # stomach contents
    CANCELLOUS = 10  # trabecular bone (vertebral bodies, rib and sternum cores)
    CORTICAL = 11  # cortical bone
    DISC = 12  # intervertebral discs
    CORD = 13  # spinal canal contents
    CARTILAGE = 14  # costal cartilage
    # v2 only
    SPLEEN = 15
    KIDNEY = 16
    BOWEL = 17  # bowel wall and contents (colon gas is GAS)
    TABLE = 18  # patient couch (carbon-fibre shell, foam core)
    BREAST = 19  # fibroglandular breast tissue
    EFFUSION = 20  # pleural fluid
    LESION = 21  # nodule, mass, consolidation, atelectasis
    METAL = 22  # pacemaker, lead, line


# v1: typical HU of each tissue and the half-width of its uniform per-phantom jitter.
TISSUE_HU = {
    Tissue.AIR: (-1000.0, 0.0),
    Tissue.FAT: (-100.0, 20.0),
    Tissue.MUSCLE: (40.0, 10.0),
    Tissue.LUNG: (-850.0, 50.0),
    Tissue.VESSEL: (45.0, 10.0),
    Tissue.HEART: (40.0, 8.0),
    Tissue.BLOOD: (50.0, 10.0),
    Tissue.GAS: (-995.0, 5.0),
    Tissue.LIVER: (60.0, 8.0),
    Tissue.STOMACH: (20.0, 10.0),
    Tissue.CANCELLOUS: (330.0, 30.0),
    Tissue.CORTICAL: (1000.0, 150.0),
    Tissue.DISC: (80.0, 10.0),
    Tissue.CORD: (30.0, 5.0),
    Tissue.CARTILAGE: (120.0, 20.0),
}

# v1: amplitude (HU) of the smooth within-tissue texture; lungs and bone are the least uniform.
TEXTURE_HU = {Tissue.FAT: 10, Tissue.MUSCLE: 8, Tissue.LUNG: 25, Tissue.LIVER: 6, Tissue.HEART: 5,
              Tissue.BLOOD: 4, Tissue.STOMACH: 10, Tissue.CANCELLOUS: 40, Tissue.CORTICAL: 60}

# v2: unenhanced adult HU (centre, half-width of the per-phantom jitter). Sources: fat −120…−80,
# muscle 35–55, liver 55–65, spleen 45–50, kidney 30–40, blood 35–50 (Hofer, "CT Teaching
# Manual", HU table; Lamba et al., AJR 2014 on unenhanced organ attenuation); lung −900…−800
# at inspiration (Coxson, AJRCCM 1999); cortical bone 800–1200 at CT resolution, cancellous
# 150–400 (decreasing with age, Schreiber, JBJS 2011); couch shell per vendor (carbon fibre
# over foam; the brief's −300…+200).
TISSUE_HU_V2 = {
    Tissue.AIR: (-1000.0, 0.0),
    Tissue.FAT: (-100.0, 15.0),
    Tissue.MUSCLE: (45.0, 10.0),
    Tissue.LUNG: (-850.0, 50.0),
    Tissue.VESSEL: (40.0, 10.0),
    Tissue.HEART: (45.0, 8.0),
    Tissue.BLOOD: (42.0, 8.0),
    Tissue.GAS: (-995.0, 5.0),
    Tissue.LIVER: (60.0, 8.0),
    Tissue.STOMACH: (20.0, 10.0),
    Tissue.CANCELLOUS: (270.0, 100.0),
    Tissue.CORTICAL: (1000.0, 200.0),
    Tissue.DISC: (80.0, 10.0),
    Tissue.CORD: (30.0, 5.0),
    Tissue.CARTILAGE: (120.0, 40.0),
    Tissue.SPLEEN: (48.0, 6.0),
    Tissue.KIDNEY: (35.0, 6.0),
    Tissue.BOWEL: (25.0, 15.0),
    Tissue.TABLE: (-50.0, 250.0),
    Tissue.BREAST: (-40.0, 50.0),
    Tissue.EFFUSION: (12.0, 8.0),
    Tissue.LESION: (30.0, 15.0),
    Tissue.METAL: (2500.0, 500.0),
}

# v2 texture amplitudes (HU): v1's plus the new soft organs.
TEXTURE_HU_V2 = {**TEXTURE_HU, Tissue.SPLEEN: 5, Tissue.KIDNEY: 8, Tissue.BOWEL: 20, Tissue.BREAST: 25,
                 Tissue.LESION: 10, Tissue.TABLE: 20}
