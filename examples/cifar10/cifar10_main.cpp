// main() of cifar10_<dtype>_zero<stage>_cuda: the binary's dtype and stage (compile
// definitions) into the GPU example compiled once in cifar10_cuda.cu.
#include <string_view>

int cifar10_cuda_main(std::string_view dtype, int stage, int argc, char** argv);

int main(int argc, char** argv) { return cifar10_cuda_main(CIFAR10_DTYPE, CIFAR10_STAGE, argc, argv); }
