#include "ciommufd.h"
