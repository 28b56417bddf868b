"""Ground truth of the photo set's ``tuning``, ``held_out`` and ``fresh`` splits
(``evaluation.photo_set``; docs/detection.md): literal numbers, each checked by eye.

Per face: five key points (eye centres, nose tip, mouth corners), the 68 landmarks' box
(exclusive ends) and the jaw width, in photo pixels; hand-placed faces add which key points
are visible. ``IGNORE`` holds regions where a detection counts neither way. The ``fresh2``
split keeps its own in ``evaluation.photo_fresh2``.
"""

# dlib's 68 landmarks (HOG detector at upsample 1, shape_predictor_68_face_landmarks) of
# the faces without a .pts file, reduced to the five key points, the landmarks' box
# (exclusive ends) and the jaw width (landmarks 0-16); each checked by drawing it on the
# photo (tests/test_photo_set.py re-runs dlib on them). Photo pixels, 0.1 px.
DLIB_FACES = {
  'obama': [
    (
      ((443.8, 215.2), (548.2, 214.8), (497.0, 273.0), (433.0, 323.0), (555.0, 319.0)),
      (369, 182, 616, 429),
      246.0,
    )
  ],
  'obama2': [
    (
      ((252.2, 371.8), (369.3, 382.7), (281.0, 440.0), (243.0, 523.0), (353.0, 529.0)),
      (206, 335, 487, 639),
      280.0,
    )
  ],
  'obama3': [
    (
      ((738.8, 388.0), (858.3, 401.7), (817.0, 432.0), (734.0, 515.0), (848.0, 528.0)),
      (629, 342, 916, 618),
      286.0,
    )
  ],
  'biden': [
    (
      ((534.5, 323.8), (652.0, 350.8), (596.0, 400.0), (519.0, 459.0), (627.0, 480.0)),
      (424, 278, 708, 567),
      283.0,
    )
  ],
  'astronaut': [
    (
      ((203.2, 101.5), (246.5, 104.2), (225.0, 127.0), (201.0, 139.0), (246.0, 141.0)),
      (179, 87, 273, 179),
      93.0,
    )
  ],
  # Jesse, at the left; Walter's face (right) is breakingbad.pts.
  'breakingbad': [
    (
      ((687.5, 276.2), (794.5, 282.2), (722.0, 342.0), (690.0, 400.0), (775.0, 402.0)),
      (643, 245, 891, 476),
      247.0,
    )
  ],
  # The seated man at the lower left (46 px, looking down); Einstein is einstein.pts.
  'einstein': [
    (
      ((154.7, 644.7), (171.8, 645.0), (169.0, 656.0), (156.0, 669.0), (168.0, 669.0)),
      (132, 636, 179, 685),
      46.0,
    )
  ],
  'tongue': [
    (
      ((290.2, 411.8), (504.5, 422.5), (356.0, 534.0), (281.0, 670.0), (494.0, 688.0)),
      (199, 302, 696, 883),
      496.0,
    )
  ],
  # The fresh split (faces dlib misses: MESH_FACES, HAND_FACES).
  'faceapi1': [
    (
      ((437.2, 461.2), (517.2, 463.0), (460.0, 504.0), (446.0, 540.0), (523.0, 542.0)),
      (411, 425, 608, 597),
      189.0,
    ),
    (
      ((1515.8, 273.3), (1603.8, 311.3), (1527.0, 326.0), (1486.0, 364.0), (1556.0, 398.0)),
      (1452, 235, 1676, 455),
      223.0,
    ),
    (
      ((868.3, 548.3), (943.3, 512.3), (908.0, 586.0), (914.0, 614.0), (981.0, 581.0)),
      (834, 461, 1041, 654),
      192.0,
    ),
  ],
  # The woman at the right; the one in the middle looks down (mesh).
  'faceapi2': [
    (
      ((1485.8, 282.8), (1562.8, 260.8), (1529.0, 326.0), (1531.0, 351.0), (1586.0, 335.0)),
      (1446, 202, 1654, 393),
      203.0,
    )
  ],
  'faceapi3': [
    (
      ((630.0, 434.0), (723.0, 435.0), (661.0, 484.0), (636.0, 535.0), (713.0, 537.0)),
      (592, 397, 801, 607),
      208.0,
    ),
    (
      ((1554.3, 412.5), (1651.5, 403.0), (1625.0, 468.0), (1550.0, 503.0), (1654.0, 494.0)),
      (1475, 370, 1690, 578),
      214.0,
    ),
    (
      ((1119.3, 323.0), (1213.0, 341.2), (1134.0, 385.0), (1101.0, 423.0), (1196.0, 441.0)),
      (1064, 285, 1308, 514),
      243.0,
    ),
  ],
  'faceapi4': [
    (
      ((1312.2, 229.2), (1380.5, 269.7), (1309.0, 280.0), (1277.0, 303.0), (1349.0, 337.0)),
      (1255, 198, 1455, 396),
      199.0,
    ),
    (
      ((1008.7, 282.3), (1075.8, 291.2), (1013.0, 325.0), (1014.0, 354.0), (1075.0, 364.0)),
      (987, 248, 1176, 417),
      188.0,
    ),
    (
      ((707.7, 151.5), (776.8, 189.5), (709.0, 198.0), (678.0, 231.0), (737.0, 259.0)),
      (655, 107, 846, 309),
      190.0,
    ),
  ],
  'faceapi5': [
    (
      ((421.8, 993.8), (519.7, 981.2), (484.0, 1040.0), (442.0, 1098.0), (530.0, 1086.0)),
      (358, 938, 567, 1177),
      208.0,
    ),
    (
      ((682.0, 515.3), (748.5, 516.5), (743.0, 558.0), (684.0, 605.0), (742.0, 600.0)),
      (587, 482, 771, 672),
      183.0,
    ),
    (
      ((1150.5, 296.3), (1230.3, 296.2), (1178.0, 326.0), (1146.0, 378.0), (1222.0, 377.0)),
      (1111, 261, 1296, 439),
      184.0,
    ),
    (
      ((845.8, 194.2), (921.0, 206.3), (890.0, 238.0), (843.0, 277.0), (905.0, 287.0)),
      (776, 158, 947, 334),
      170.0,
    ),
    (
      ((1439.0, 507.8), (1521.2, 493.5), (1467.0, 572.0), (1466.0, 612.0), (1539.0, 600.0)),
      (1412, 460, 1624, 672),
      200.0,
    ),
  ],
  'faceapi6': [
    (
      ((702.5, 455.7), (794.7, 449.2), (730.0, 516.0), (726.0, 552.0), (812.0, 552.0)),
      (670, 407, 891, 633),
      209.0,
    ),
    (
      ((322.3, 609.3), (425.3, 597.3), (396.0, 666.0), (341.0, 704.0), (432.0, 692.0)),
      (244, 555, 471, 760),
      226.0,
    ),
    (
      ((1536.2, 376.8), (1627.8, 397.5), (1556.0, 455.0), (1515.0, 476.0), (1596.0, 494.0)),
      (1477, 336, 1705, 561),
      227.0,
    ),
    (
      ((1227.5, 429.2), (1329.0, 430.0), (1276.0, 503.0), (1243.0, 534.0), (1316.0, 529.0)),
      (1169, 396, 1381, 585),
      211.0,
    ),
  ],
  't1': [
    (
      ((1149.3, 327.7), (1192.0, 324.8), (1164.0, 348.0), (1153.0, 367.0), (1196.0, 364.0)),
      (1132, 306, 1232, 402),
      99.0,
    ),
    (
      ((87.7, 330.2), (128.8, 310.5), (118.0, 337.0), (114.0, 372.0), (148.0, 352.0)),
      (60, 285, 176, 399),
      115.0,
    ),
    (
      ((761.8, 398.7), (800.5, 403.8), (771.0, 431.0), (764.0, 436.0), (807.0, 442.0)),
      (746, 384, 848, 482),
      101.0,
    ),
    (
      ((491.7, 320.3), (540.5, 333.7), (509.0, 366.0), (481.0, 369.0), (531.0, 380.0)),
      (464, 303, 574, 417),
      109.0,
    ),
    (
      ((916.8, 117.8), (950.3, 114.7), (923.0, 148.0), (929.0, 176.0), (959.0, 169.0)),
      (905, 98, 1016, 209),
      107.0,
    ),
    (
      ((291.8, 212.3), (320.5, 194.3), (302.0, 229.0), (313.0, 249.0), (338.0, 234.0)),
      (279, 173, 377, 268),
      89.0,
    ),
  ],
}
# Fresh faces dlib's HOG detector misses: the five key points and box of the 68 points taken
# from the face mesh (``faces.landmarks.from_mesh``; the mesh sure of the face, presence
# 1.0), each drawn on the photo and checked by eye. Same layout as ``DLIB_FACES``.
MESH_FACES = {
  'faceapi2': [
    (
      ((947.7, 339.1), (1033.6, 337.2), (997.2, 397.4), (949.7, 408.9), (1021.8, 408.7)),
      (897, 309, 1069, 451),
      171.2,
    )
  ],
  'faceapi4': [
    (
      ((319.5, 317.1), (390.6, 283.8), (400.9, 341.0), (351.4, 394.1), (408.6, 368.5)),
      (237, 250, 413, 437),
      175.0,
    )
  ],
}
# Annotated by hand on a 2x crop: the woman at the left of faceapi2, in profile facing
# image-left (dlib and the mesh both fail on her). Her far eye and far mouth corner are
# hidden (placed where they would be, not visible); the box runs from the nose tip to the
# jaw below the ear and from the brow to the chin; the width is the jaw's, estimated.
HAND_FACES = {
  'faceapi2': [
    (
      ((375.0, 240.0), (412.5, 244.0), (361.0, 300.0), (392.0, 344.0), (427.5, 347.5)),
      (358, 205, 555, 423),
      160.0,
      (False, True, True, False, True),
    )
  ],
}
# obama_partial_face(2) are obama.jpg's columns 419-909 and 0-550 (re-encoded; checked by
# tests/test_photo_set.py): their face is obama.jpg's, shifted. All five key points are in
# the frame (only a cheek and an ear are cut), so it is a face a detector must find.
CROPS = {'obama_partial_face': ('obama', 419), 'obama_partial_face2': ('obama', 0)}
# Annotated by hand (looking at crops of the photo): regions where a detection is neither a
# hit nor a false box, (x0, y0, x1, y1) in photo pixels.
IGNORE = {
  # A woman's face cut in half by the right edge, out of focus: one eye at most.
  'obama2': [(540, 330, 626, 660)],
  # The wall's seal at the left edge holds a relief that may be a head.
  'einstein': [(12, 320, 80, 430)],
}
