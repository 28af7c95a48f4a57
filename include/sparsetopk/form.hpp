#pragma once
// Which of SPEC.md's two soft top-k problems: the mask (keys x_i, outputs in
// [0, 1] summing to k) or the magnitude (keys |x_i|, outputs x_i shrunk toward
// 0). The one name for this choice in every C++ layer.

namespace sparsetopk {

enum class Form { mask, magnitude };

}  // namespace sparsetopk
