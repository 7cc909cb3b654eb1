// main() of each cifar10 binary: its dtype and stage (compile definitions) into the
// translation unit that holds its configuration (cifar10.cpp, or cifar10_cuda.cu on the GPU).
#include <string_view>

int cifar10_main(std::string_view dtype, int stage, int argc, char** argv);

int main(int argc, char** argv) { return cifar10_main(CIFAR10_DTYPE, CIFAR10_STAGE, argc, argv); }
