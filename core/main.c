/* main.c - placeholder until config.c lands. */
int main(void)
{
    return 0;
}
