// The C++ layer as its users build it (pkg-config, C++17): stream a short
// generation from the server the environment names and print its text.
#include <iostream>
#include <string>

#include <maas/maas.hpp>

int main()
{
    try {
        maas::Client client; // MAAS_CLIENT_ID, MAAS_CLIENT_SECRET, ...
        std::string text;
        maas::Details details = client.generate(
            {"mistralai/Mistral-7B-Instruct-v0.1", "Tell me a joke", 16},
            [&text](std::string_view t) {
                std::cout << t;
                text += t;
            });
        std::cout << "\n";
        if (text.empty() || text != details.generated_text) {
            std::cerr << "consumer: the text and the server's differ\n";
            return 1;
        }
        std::cerr << "consumer: " << text.size() << " bytes, " << details.finish_reason_name
                  << ", libmaas " << maas::version() << "\n";
        return maas::version() == MAAS_VERSION_STRING ? 0 : 2;
    } catch (const maas::Error &e) {
        std::cerr << "consumer: " << e.status_name() << ": " << e.what() << "\n";
        return 1;
    }
}
