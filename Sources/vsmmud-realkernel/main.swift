print("0 passed, 1 failed: the real-kernel suite is not written yet")
